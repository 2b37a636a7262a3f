// One batch's counts for `train::tally::Tally` in one kernel launch: the predicted class of
// each row of the logits (the first maximal logit, NaN ignored, class 0 for a row of NaN), the
// confusion cell `min(label, k) * k + predicted` (capped at the stray slot k * k) and the top-5
// hit (fewer than five logits ranked above the label's: larger, or equal of a class before it;
// a label that is no class reads the last class's logit), added in place to `counts` (k * k + 2
// slots: the confusion matrix, the stray slot, the top-5 hits); the n predictions go to
// `predicted`. One thread a row.

extern "C" __global__ void tally_batch(const float *logits, const unsigned int *labels,
                                       unsigned int *counts, unsigned int *predicted,
                                       unsigned int n, unsigned int k) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
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
    unsigned int at = label < k ? label : k - 1;
    float mark = row[at];
    unsigned int above = 0;
    for (unsigned int j = 0; j < k; ++j) {
        above += (row[j] > mark || (j < at && row[j] == mark)) ? 1u : 0u;
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
