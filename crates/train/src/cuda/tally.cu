// One batch's counts for `train::tally::Tally` in one launch of one block: the predicted
// class of each row of the logits (the first maximal logit, NaN ignored, class 0 for a row of
// NaN), the confusion cell `min(label, k) * k + predicted` (capped at the stray slot k * k) and
// the top-5 hit (fewer than five logits strictly above the label's; a label that is no class
// reads the last class's logit), added to the previous counts. `out` receives the k * k + 2
// counts (the confusion matrix, the stray slot, the top-5 hits), then the n predictions.

extern "C" __global__ void tally_batch(const float *logits, const unsigned int *labels,
                                       const unsigned int *prev, unsigned int *out,
                                       unsigned int n, unsigned int k) {
    const unsigned int slots = k * k + 2;
    unsigned int *counts = out;
    unsigned int *predicted = out + slots;
    for (unsigned int c = threadIdx.x; c < slots; c += blockDim.x) {
        counts[c] = prev[c];
    }
    // One block: the copies above are seen by every thread after this.
    __syncthreads();
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        const float *row = logits + (size_t)i * k;
        unsigned int best = 0;
        float top = 0.0f;
        bool any = false;
        for (unsigned int j = 0; j < k; ++j) {
            float v = row[j];
            if (v == v && (!any || v > top)) {
                top = v;
                best = j;
                any = true;
            }
        }
        unsigned int label = labels[i];
        float mark = row[label < k ? label : k - 1];
        unsigned int above = 0;
        for (unsigned int j = 0; j < k; ++j) {
            above += row[j] > mark ? 1u : 0u;
        }
        unsigned int cell = (label < k ? label : k) * k + best;
        if (cell > k * k) {
            cell = k * k;
        }
        predicted[i] = best;
        atomicAdd(&counts[cell], 1u);
        if (above < 5) {
            atomicAdd(&counts[k * k + 1], 1u);
        }
    }
}
