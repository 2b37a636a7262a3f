//! PyTorch 2.15's schedules, step by step, as the bits of each float64 value (written by
//! PyTorch 2.15.0's `torch.optim.lr_scheduler` on an SGD optimizer at lr=0.1, momentum 0.9):
//! the schedules here must give the same bits.

use super::*;

fn bits(x: f64) -> u64 {
    x.to_bits()
}

/// OneCycleLR(max_lr=0.1, total_steps=100): (three_phase, anneal_strategy, [(lr, momentum)
/// after t steps, t = 0..100]).
/// (three_phase, anneal_strategy, the bits of (lr, momentum) after t = 0..100 steps).
type OneCycleCase = (bool, AnnealStrategy, [(u64, u64); 100]);

#[rustfmt::skip]
const ONE_CYCLE: [OneCycleCase; 4] = [
    (false, AnnealStrategy::Cos, [
        (0x3f70624dd2f1aa00, 0x3fee666666666666), (0x3f718959abc20650, 0x3fee63ffb862b450), (0x3f74fb07ab7cb2d0, 0x3fee5cd2e3389a14),
        (0x3f7aad0193d44190, 0x3fee50f56fe9e3aa), (0x3f814717bc9e3f10, 0x3fee408afaf69fd7), (0x3f86437588539ec0, 0x3fee2bc4c97b2c1d),
        (0x3f8c3ca355554cc0, 0x3fee12e1354fa51e), (0x3f919059c1c19464, 0x3fedf62af1e490b4), (0x3f956d7bbcbb95f0, 0x3fedd5f82c0e6d51),
        (0x3f99aa1edbc68270, 0x3fedb2a987611249), (0x3f9e398bba3e9f38, 0x3fed8ca8fc23295a), (0x3fa187093ca77194, 0x3fed646899404c79),
        (0x3fa40c99ea2b58bd, 0x3fed3a612df460c1), (0x3fa6a5e651e4be81, 0x3fed0f10df33a421), (0x3fa94b21a5f83f09, 0x3fece2f9ad0fb46e),
        (0x3fabf45b4799296a, 0x3fecb69fec89e52b), (0x3fae99969baca9f1, 0x3fec8a88ba65f578), (0x3fb0997181b307da, 0x3fec5f386ba538d8),
        (0x3fb1dc39d874fb70, 0x3fec353100594d20), (0x3fb3115b88390c6c, 0x3fec0cf09d767040), (0x3fb43536bfd7139d, 0x3febe6f012388750),
        (0x3fb5445f8799cebd, 0x3febc3a16d8b2c48), (0x3fb63ba806584f20, 0x3feba36ea7b508e5), (0x3fb7182a0c1e0aa2, 0x3feb86b86449f47b),
        (0x3fb7d74fc5be4062, 0x3feb6dd4d01e6d7c), (0x3fb876db7f34ec58, 0x3feb590e9ea2f9c2), (0x3fb8f4ee5d8b7020, 0x3feb48a429afb5ef),
        (0x3fb9500dfc10e90d, 0x3feb3cc6b660ff85), (0x3fb98728dc0c93d5, 0x3feb3599e136e549), (0x3fb999999999999a, 0x3feb333333333333),
        (0x3fb9964ced26b749, 0x3feb339cc8dd3d27), (0x3fb98c689b46c001, 0x3feb34d9536c36c9), (0x3fb97bf1bd8340e6, 0x3feb36e82faec3ad),
        (0x3fb964f0d0d592c5, 0x3feb39c84e057185), (0x3fb94771b146933b, 0x3feb3d7832eec121), (0x3fb9238393d16a86, 0x3feb41f5f7cacde8),
        (0x3fb8f938fe8c84ca, 0x3feb473f4bd62ef3), (0x3fb8c8a7bf1cc9aa, 0x3feb4d51755b9066), (0x3fb891e8df77fe85, 0x3feb5429531b678b),
        (0x3fb8551898fc1ee6, 0x3feb5bc35de9082d), (0x3fb8125645e252ef, 0x3feb641baa7c4648), (0x3fb7c9c45115041b, 0x3feb6d2deb76b3f3),
        (0x3fb77b88247165b7, 0x3feb76f5739b70ec), (0x3fb727ca157d96e0, 0x3feb816d383866f7), (0x3fb6ceb5509d4fcc, 0x3feb8c8fd3bfb4e2),
        (0x3fb67077c2cfd2c6, 0x3feb9857888ff123), (0x3fb60d4202029a7e, 0x3feba4be43e9d4d2), (0x3fb5a5473404faa3, 0x3febb1bda111c869),
        (0x3fb538bcf4299c99, 0x3febbf4eec9bb50e), (0x3fb4c7db37a37094, 0x3febcd6b27df674f), (0x3fb452dc30ac52a6, 0x3febdc0b0c93bb7b),
        (0x3fb3d9fc30844333, 0x3febeb27108eb78a), (0x3fb35d798858aab3, 0x3febfab769a8a3ad), (0x3fb2dd946923b0d9, 0x3fec0ab411c02071),
        (0x3fb25a8ec294376c, 0x3fec1b14cadd2881), (0x3fb1d4ac210f8877, 0x3fec2bd12370dbf8), (0x3fb14c318ade3e66, 0x3fec3ce07aafe482),
        (0x3fb0c1655c965a25, 0x3fec4e3a050533c4), (0x3fb0348f24d4dff9, 0x3fec5fd4d09ad0f2), (0x3faf4beefeb35d1b, 0x3fec71a7c9f65f21),
        (0x3fae2bcfdf312a7f, 0x3fec83a9c0a6fbb7), (0x3fad095575a5ec20, 0x3fec95d16c020b6d), (0x3fabe515839afaa8, 0x3feca8156fec8497),
        (0x3faabfa6b46b5954, 0x3fecba6c61ae3f0e), (0x3fa999a04f964049, 0x3feccccccccccccc), (0x3fa87399eac12741, 0x3fecdf2d37eb5a8a),
        (0x3fa74e2b1b9185eb, 0x3fecf18429ad1502), (0x3fa629eb29869474, 0x3fed03c82d978e2c), (0x3fa50770bffb5614, 0x3fed15efd8f29de2),
        (0x3fa3e751a0792377, 0x3fed27f1cfa33a78), (0x3fa2ca225582c0a0, 0x3fed39c4c8fec8a6), (0x3fa1b075e5ffcc48, 0x3fed4b5f949465d5),
        (0x3fa09add897003c6, 0x3fed5cb91ee9b517), (0x3f9f13d0ba1adf49, 0x3fed6dc87628bda1), (0x3f9cfc4634082376, 0x3fed7e84cebc7118),
        (0x3f9af02f99ca3dc2, 0x3fed8ee587d97928), (0x3f98f09b1cf6565d, 0x3fed9ee22ff0f5ec), (0x3f96fe907c47f459, 0x3fedae72890ae20e),
        (0x3f951b107ba7b68d, 0x3fedbd8e8d05de1e), (0x3f9347145fcb3ed5, 0x3fedcc2e71ba324a), (0x3f91838d6db28ec4, 0x3fedda4aacfde48b),
        (0x3f8fa2c8dc8a2d33, 0x3fede7dbf887d130), (0x3f8c62f26c9d2e5e, 0x3fedf4db55afc4c7), (0x3f89494466336c21, 0x3fee01421109a876),
        (0x3f865757f7c783e9, 0x3fee0d09c5d9e4b7), (0x3f838eb1d0c54b4a, 0x3fee182c616132a2), (0x3f80f0c15926d48f, 0x3fee22a425fe28ad),
        (0x3f7cfdbfe813c2e0, 0x3fee2c6bae22e5a6), (0x3f7874a09b3ed5a7, 0x3fee357def1d5351), (0x3f74487b69a2163a, 0x3fee3dd63bb0916c),
        (0x3f707b7701e41c4a, 0x3fee4570467e320e), (0x3f6a1f120f2ed3de, 0x3fee4c48243e0933), (0x3f640cea21376ff5, 0x3fee525a4dc36aa6),
        (0x3f5d872ef13570e2, 0x3fee57a3a1cecbb1), (0x3f548ba793eb4369, 0x3fee5c2166aad878), (0x3f4a57bf6056c24f, 0x3fee5fd14b942814),
        (0x3f3dae9212ff637b, 0x3fee62b169ead5ec), (0x3f2a6f689f0091f1, 0x3fee64c0462d62d0), (0x3f0a9b137c48058d, 0x3fee65fcd0bc5c72),
        (0x3e9ad7f29abcaf48, 0x3fee666666666666),
    ]),
    (false, AnnealStrategy::Linear, [
        (0x3f70624dd2f1a9fc, 0x3fee666666666666), (0x3f7df173bf4fbb13, 0x3fee4a26d764a26d), (0x3f85c04cd5d6e615, 0x3fee2de74862de74),
        (0x3f8c87dfcc05eea1, 0x3fee11a7b9611a7b), (0x3f91a7b9611a7b96, 0x3fedf5682a5f5682), (0x3f950b82dc31ffdc, 0x3fedd9289b5d9289),
        (0x3f986f4c57498422, 0x3fedbce90c5bce90), (0x3f9bd315d2610868, 0x3feda0a97d5a0a97), (0x3f9f36df4d788cad, 0x3fed8469ee58469f),
        (0x3fa14d546448087a, 0x3fed682a5f5682a6), (0x3fa2ff3921d3ca9c, 0x3fed4bead054bead), (0x3fa4b11ddf5f8cc0, 0x3fed2fab4152fab4),
        (0x3fa663029ceb4ee2, 0x3fed136bb25136bb), (0x3fa814e75a771106, 0x3fecf72c234f72c2), (0x3fa9c6cc1802d328, 0x3fecdaec944daec9),
        (0x3fab78b0d58e954c, 0x3fecbead054bead0), (0x3fad2a95931a576e, 0x3feca26d764a26d7), (0x3faedc7a50a61990, 0x3fec862de74862de),
        (0x3fb0472f8718edda, 0x3fec69ee58469ee5), (0x3fb12021e5deceeb, 0x3fec4daec944daec), (0x3fb1f91444a4affd, 0x3fec316f3a4316f3),
        (0x3fb2d206a36a910e, 0x3fec152fab4152fa), (0x3fb3aaf902307220, 0x3febf8f01c3f8f02), (0x3fb483eb60f65332, 0x3febdcb08d3dcb08),
        (0x3fb55cddbfbc3443, 0x3febc070fe3c0710), (0x3fb635d01e821554, 0x3feba4316f3a4317), (0x3fb70ec27d47f666, 0x3feb87f1e0387f1e),
        (0x3fb7e7b4dc0dd777, 0x3feb6bb25136bb25), (0x3fb8c0a73ad3b889, 0x3feb4f72c234f72c), (0x3fb999999999999a, 0x3feb333333333333),
        (0x3fb93bfa3e93b363, 0x3feb3ee721a54d88), (0x3fb8de5ae38dcd2d, 0x3feb4a9b101767dd), (0x3fb880bb8887e6f6, 0x3feb564efe898232),
        (0x3fb8231c2d8200c0, 0x3feb6202ecfb9c86), (0x3fb7c57cd27c1a89, 0x3feb6db6db6db6db), (0x3fb767dd77763453, 0x3feb796ac9dfd130),
        (0x3fb70a3e1c704e1c, 0x3feb851eb851eb85), (0x3fb6ac9ec16a67e6, 0x3feb90d2a6c405da), (0x3fb64eff666481af, 0x3feb9c869536202f),
        (0x3fb5f1600b5e9b78, 0x3feba83a83a83a83), (0x3fb593c0b058b542, 0x3febb3ee721a54d8), (0x3fb536215552cf0b, 0x3febbfa2608c6f2d),
        (0x3fb4d881fa4ce8d5, 0x3febcb564efe8982), (0x3fb47ae29f47029e, 0x3febd70a3d70a3d7), (0x3fb41d4344411c68, 0x3febe2be2be2be2c),
        (0x3fb3bfa3e93b3631, 0x3febee721a54d880), (0x3fb362048e354ffa, 0x3febfa2608c6f2d5), (0x3fb30465332f69c4, 0x3fec05d9f7390d2a),
        (0x3fb2a6c5d829838e, 0x3fec118de5ab277f), (0x3fb249267d239d57, 0x3fec1d41d41d41d4), (0x3fb1eb87221db720, 0x3fec28f5c28f5c29),
        (0x3fb18de7c717d0ea, 0x3fec34a9b101767e), (0x3fb130486c11eab3, 0x3fec405d9f7390d2), (0x3fb0d2a9110c047c, 0x3fec4c118de5ab27),
        (0x3fb07509b6061e46, 0x3fec57c57c57c57c), (0x3fb0176a5b003810, 0x3fec63796ac9dfd1), (0x3faf7395fff4a3b2, 0x3fec6f2d593bfa26),
        (0x3faeb85749e8d744, 0x3fec7ae147ae147b), (0x3fadfd1893dd0ad7, 0x3fec869536202ecf), (0x3fad41d9ddd13e6b, 0x3fec924924924924),
        (0x3fac869b27c571fe, 0x3fec9dfd13046379), (0x3fabcb5c71b9a591, 0x3feca9b101767dce), (0x3fab101dbbadd923, 0x3fecb564efe89823),
        (0x3faa54df05a20cb6, 0x3fecc118de5ab278), (0x3fa999a04f964049, 0x3feccccccccccccc), (0x3fa8de61998a73dd, 0x3fecd880bb3ee721),
        (0x3fa82322e37ea76f, 0x3fece434a9b10176), (0x3fa767e42d72db02, 0x3fecefe898231bcb), (0x3fa6aca577670e94, 0x3fecfb9c86953620),
        (0x3fa5f166c15b4228, 0x3fed075075075075), (0x3fa536280b4f75ba, 0x3fed130463796aca), (0x3fa47ae95543a94e, 0x3fed1eb851eb851e),
        (0x3fa3bfaa9f37dce0, 0x3fed2a6c405d9f73), (0x3fa3046be92c1074, 0x3fed36202ecfb9c8), (0x3fa2492d33204406, 0x3fed41d41d41d41d),
        (0x3fa18dee7d147798, 0x3fed4d880bb3ee72), (0x3fa0d2afc708ab2c, 0x3fed593bfa2608c7), (0x3fa0177110fcdebe, 0x3fed64efe898231c),
        (0x3f9eb864b5e224a4, 0x3fed70a3d70a3d70), (0x3f9d41e749ca8bc8, 0x3fed7c57c57c57c5), (0x3f9bcb69ddb2f2f0, 0x3fed880bb3ee721a),
        (0x3f9a54ec719b5a14, 0x3fed93bfa2608c6f), (0x3f98de6f0583c13c, 0x3fed9f7390d2a6c4), (0x3f9767f1996c2860, 0x3fedab277f44c118),
        (0x3f95f1742d548f84, 0x3fedb6db6db6db6d), (0x3f947af6c13cf6a8, 0x3fedc28f5c28f5c2), (0x3f93047955255dd0, 0x3fedce434a9b1017),
        (0x3f918dfbe90dc4f4, 0x3fedd9f7390d2a6c), (0x3f90177e7cf62c1c, 0x3fede5ab277f44c1), (0x3f8d420221bd2688, 0x3fedf15f15f15f16),
        (0x3f8a5507498df4d0, 0x3fedfd130463796a), (0x3f87680c715ec320, 0x3fee08c6f2d593bf), (0x3f847b11992f9168, 0x3fee147ae147ae14),
        (0x3f818e16c1005fb8, 0x3fee202ecfb9c869), (0x3f7d4237d1a25c00, 0x3fee2be2be2be2be), (0x3f7768422143f890, 0x3fee3796ac9dfd13),
        (0x3f718e4c70e59520, 0x3fee434a9b101768), (0x3f6768ad810e6380, 0x3fee4efe898231bc), (0x3f57698440a33940, 0x3fee5ab277f44c11),
        (0x3e9ad7f29abc0000, 0x3fee666666666666),
    ]),
    (true, AnnealStrategy::Cos, [
        (0x3f70624dd2f1aa00, 0x3fee666666666666), (0x3f718959abc20650, 0x3fee63ffb862b450), (0x3f74fb07ab7cb2d0, 0x3fee5cd2e3389a14),
        (0x3f7aad0193d44190, 0x3fee50f56fe9e3aa), (0x3f814717bc9e3f10, 0x3fee408afaf69fd7), (0x3f86437588539ec0, 0x3fee2bc4c97b2c1d),
        (0x3f8c3ca355554cc0, 0x3fee12e1354fa51e), (0x3f919059c1c19464, 0x3fedf62af1e490b4), (0x3f956d7bbcbb95f0, 0x3fedd5f82c0e6d51),
        (0x3f99aa1edbc68270, 0x3fedb2a987611249), (0x3f9e398bba3e9f38, 0x3fed8ca8fc23295a), (0x3fa187093ca77194, 0x3fed646899404c79),
        (0x3fa40c99ea2b58bd, 0x3fed3a612df460c1), (0x3fa6a5e651e4be81, 0x3fed0f10df33a421), (0x3fa94b21a5f83f09, 0x3fece2f9ad0fb46e),
        (0x3fabf45b4799296a, 0x3fecb69fec89e52b), (0x3fae99969baca9f1, 0x3fec8a88ba65f578), (0x3fb0997181b307da, 0x3fec5f386ba538d8),
        (0x3fb1dc39d874fb70, 0x3fec353100594d20), (0x3fb3115b88390c6c, 0x3fec0cf09d767040), (0x3fb43536bfd7139d, 0x3febe6f012388750),
        (0x3fb5445f8799cebd, 0x3febc3a16d8b2c48), (0x3fb63ba806584f20, 0x3feba36ea7b508e5), (0x3fb7182a0c1e0aa2, 0x3feb86b86449f47b),
        (0x3fb7d74fc5be4062, 0x3feb6dd4d01e6d7c), (0x3fb876db7f34ec58, 0x3feb590e9ea2f9c2), (0x3fb8f4ee5d8b7020, 0x3feb48a429afb5ef),
        (0x3fb9500dfc10e90d, 0x3feb3cc6b660ff85), (0x3fb98728dc0c93d5, 0x3feb3599e136e549), (0x3fb999999999999a, 0x3feb333333333333),
        (0x3fb98728dc0c93d5, 0x3feb3599e136e549), (0x3fb9500dfc10e90d, 0x3feb3cc6b660ff85), (0x3fb8f4ee5d8b7021, 0x3feb48a429afb5ef),
        (0x3fb876db7f34ec58, 0x3feb590e9ea2f9c2), (0x3fb7d74fc5be4062, 0x3feb6dd4d01e6d7c), (0x3fb7182a0c1e0aa2, 0x3feb86b86449f47b),
        (0x3fb63ba806584f21, 0x3feba36ea7b508e5), (0x3fb5445f8799cebe, 0x3febc3a16d8b2c48), (0x3fb43536bfd7139e, 0x3febe6f012388750),
        (0x3fb3115b88390c6c, 0x3fec0cf09d767040), (0x3fb1dc39d874fb70, 0x3fec353100594d20), (0x3fb0997181b307db, 0x3fec5f386ba538d8),
        (0x3fae99969baca9f2, 0x3fec8a88ba65f578), (0x3fabf45b4799296a, 0x3fecb69fec89e52b), (0x3fa94b21a5f83f0a, 0x3fece2f9ad0fb46e),
        (0x3fa6a5e651e4be82, 0x3fed0f10df33a421), (0x3fa40c99ea2b58c0, 0x3fed3a612df460c1), (0x3fa187093ca77194, 0x3fed646899404c79),
        (0x3f9e398bba3e9f37, 0x3fed8ca8fc232959), (0x3f99aa1edbc68272, 0x3fedb2a987611249), (0x3f956d7bbcbb95f2, 0x3fedd5f82c0e6d51),
        (0x3f919059c1c19466, 0x3fedf62af1e490b4), (0x3f8c3ca355554cbf, 0x3fee12e1354fa51e), (0x3f86437588539ec0, 0x3fee2bc4c97b2c1d),
        (0x3f814717bc9e3f10, 0x3fee408afaf69fd7), (0x3f7aad0193d44198, 0x3fee50f56fe9e3aa), (0x3f74fb07ab7cb2c5, 0x3fee5cd2e3389a14),
        (0x3f718959abc20646, 0x3fee63ffb862b450), (0x3f70624dd2f1a9fc, 0x3fee666666666666), (0x3f705c26b20e863f, 0x3fee666666666666),
        (0x3f7049ba8db9d248, 0x3fee666666666666), (0x3f702b25130ebd7c, 0x3fee666666666666), (0x3f700094345ae930, 0x3fee666666666666),
        (0x3f6f948fc82f9220, 0x3fee666666666666), (0x3f6f112369b239e7, 0x3fee666666666666), (0x3f6e77a8bd81ae7e, 0x3fee666666666666),
        (0x3f6dc906566114b2, 0x3fee666666666666), (0x3f6d06428f2e55b6, 0x3fee666666666666), (0x3f6c308200beb059, 0x3fee666666666666),
        (0x3f6b4905ca4c7568, 0x3fee666666666666), (0x3f6a5129af0a4e77, 0x3fee666666666666), (0x3f694a620bb0cf72, 0x3fee666666666666),
        (0x3f683639a7173396, 0x3fee666666666666), (0x3f67164f611fab5f, 0x3fee666666666666), (0x3f65ec53c37237c1, 0x3fee666666666666),
        (0x3f64ba0677ae6af4, 0x3fee666666666666), (0x3f638133a6e4443d, 0x3fee666666666666), (0x3f6243b146467f69, 0x3fee666666666666),
        (0x3f61035c5524e4ec, 0x3fee666666666666), (0x3f5f842c20a689e3, 0x3fee666666666666), (0x3f5d03823e6354e9, 0x3fee666666666666),
        (0x3f5a887d7d27cb3e, 0x3fee666666666666), (0x3f5816d7db937dd6, 0x3fee666666666666), (0x3f55b23d440be437, 0x3fee666666666666),
        (0x3f535e4608b0fcfd, 0x3fee666666666666), (0x3f511e717cc1ec8b, 0x3fee666666666666), (0x3f4dec41671d69aa, 0x3fee666666666666),
        (0x3f49d122d9b76d9c, 0x3fee666666666666), (0x3f45f1b26caed1d1, 0x3fee666666666666), (0x3f4253c192e5e60e, 0x3fee666666666666),
        (0x3f3df97eb24ea135, 0x3fee666666666666), (0x3f37e36078b8a958, 0x3fee666666666666), (0x3f326e4d3fb3db00, 0x3fee666666666666),
        (0x3f2b44efbc5eff58, 0x3fee666666666666), (0x3f230e29d4897bd6, 0x3fee666666666666), (0x3f18893f984aef9f, 0x3fee666666666666),
        (0x3f0bca0fd6abb9b3, 0x3fee666666666666), (0x3ef8fea50242a7b1, 0x3fee666666666666), (0x3eda4a02b63abc82, 0x3fee666666666666),
        (0x3e9ad7f29abcaf48, 0x3fee666666666666),
    ]),
    (true, AnnealStrategy::Linear, [
        (0x3f70624dd2f1a9fc, 0x3fee666666666666), (0x3f7df173bf4fbb13, 0x3fee4a26d764a26d), (0x3f85c04cd5d6e615, 0x3fee2de74862de74),
        (0x3f8c87dfcc05eea1, 0x3fee11a7b9611a7b), (0x3f91a7b9611a7b96, 0x3fedf5682a5f5682), (0x3f950b82dc31ffdc, 0x3fedd9289b5d9289),
        (0x3f986f4c57498422, 0x3fedbce90c5bce90), (0x3f9bd315d2610868, 0x3feda0a97d5a0a97), (0x3f9f36df4d788cad, 0x3fed8469ee58469f),
        (0x3fa14d546448087a, 0x3fed682a5f5682a6), (0x3fa2ff3921d3ca9c, 0x3fed4bead054bead), (0x3fa4b11ddf5f8cc0, 0x3fed2fab4152fab4),
        (0x3fa663029ceb4ee2, 0x3fed136bb25136bb), (0x3fa814e75a771106, 0x3fecf72c234f72c2), (0x3fa9c6cc1802d328, 0x3fecdaec944daec9),
        (0x3fab78b0d58e954c, 0x3fecbead054bead0), (0x3fad2a95931a576e, 0x3feca26d764a26d7), (0x3faedc7a50a61990, 0x3fec862de74862de),
        (0x3fb0472f8718edda, 0x3fec69ee58469ee5), (0x3fb12021e5deceeb, 0x3fec4daec944daec), (0x3fb1f91444a4affd, 0x3fec316f3a4316f3),
        (0x3fb2d206a36a910e, 0x3fec152fab4152fa), (0x3fb3aaf902307220, 0x3febf8f01c3f8f02), (0x3fb483eb60f65332, 0x3febdcb08d3dcb08),
        (0x3fb55cddbfbc3443, 0x3febc070fe3c0710), (0x3fb635d01e821554, 0x3feba4316f3a4317), (0x3fb70ec27d47f666, 0x3feb87f1e0387f1e),
        (0x3fb7e7b4dc0dd777, 0x3feb6bb25136bb25), (0x3fb8c0a73ad3b889, 0x3feb4f72c234f72c), (0x3fb999999999999a, 0x3feb333333333333),
        (0x3fb8c0a73ad3b889, 0x3feb4f72c234f72c), (0x3fb7e7b4dc0dd777, 0x3feb6bb25136bb25), (0x3fb70ec27d47f666, 0x3feb87f1e0387f1e),
        (0x3fb635d01e821554, 0x3feba4316f3a4317), (0x3fb55cddbfbc3443, 0x3febc070fe3c0710), (0x3fb483eb60f65331, 0x3febdcb08d3dcb09),
        (0x3fb3aaf902307220, 0x3febf8f01c3f8f02), (0x3fb2d206a36a910e, 0x3fec152fab4152fa), (0x3fb1f91444a4affd, 0x3fec316f3a4316f3),
        (0x3fb12021e5deceec, 0x3fec4daec944daec), (0x3fb0472f8718edda, 0x3fec69ee58469ee5), (0x3faedc7a50a61991, 0x3fec862de74862de),
        (0x3fad2a95931a576e, 0x3feca26d764a26d7), (0x3fab78b0d58e954b, 0x3fecbead054bead0), (0x3fa9c6cc1802d328, 0x3fecdaec944daec9),
        (0x3fa814e75a771106, 0x3fecf72c234f72c2), (0x3fa663029ceb4ee3, 0x3fed136bb25136bb), (0x3fa4b11ddf5f8cc0, 0x3fed2fab4152fab4),
        (0x3fa2ff3921d3ca9e, 0x3fed4bead054bead), (0x3fa14d546448087a, 0x3fed682a5f5682a6), (0x3f9f36df4d788cb0, 0x3fed8469ee58469e),
        (0x3f9bd315d2610868, 0x3feda0a97d5a0a98), (0x3f986f4c57498420, 0x3fedbce90c5bce90), (0x3f950b82dc31ffdc, 0x3fedd9289b5d9289),
        (0x3f91a7b9611a7b98, 0x3fedf5682a5f5682), (0x3f8c87dfcc05eea0, 0x3fee11a7b9611a7b), (0x3f85c04cd5d6e618, 0x3fee2de74862de74),
        (0x3f7df173bf4fbb10, 0x3fee4a26d764a26d), (0x3f70624dd2f1aa00, 0x3fee666666666666), (0x3f6ff8073c5e4aa6, 0x3fee666666666666),
        (0x3f6f2b72d2d94155, 0x3fee666666666666), (0x3f6e5ede69543803, 0x3fee666666666666), (0x3f6d9249ffcf2eb2, 0x3fee666666666666),
        (0x3f6cc5b5964a2560, 0x3fee666666666666), (0x3f6bf9212cc51c0e, 0x3fee666666666666), (0x3f6b2c8cc34012bc, 0x3fee666666666666),
        (0x3f6a5ff859bb096b, 0x3fee666666666666), (0x3f699363f036001a, 0x3fee666666666666), (0x3f68c6cf86b0f6c8, 0x3fee666666666666),
        (0x3f67fa3b1d2bed76, 0x3fee666666666666), (0x3f672da6b3a6e425, 0x3fee666666666666), (0x3f6661124a21dad3, 0x3fee666666666666),
        (0x3f65947de09cd181, 0x3fee666666666666), (0x3f64c7e97717c830, 0x3fee666666666666), (0x3f63fb550d92bede, 0x3fee666666666666),
        (0x3f632ec0a40db58d, 0x3fee666666666666), (0x3f62622c3a88ac3b, 0x3fee666666666666), (0x3f619597d103a2e9, 0x3fee666666666666),
        (0x3f60c903677e9998, 0x3fee666666666666), (0x3f5ff8ddfbf3208c, 0x3fee666666666666), (0x3f5e5fb528e90de8, 0x3fee666666666666),
        (0x3f5cc68c55defb44, 0x3fee666666666666), (0x3f5b2d6382d4e8a4, 0x3fee666666666666), (0x3f59943aafcad600, 0x3fee666666666666),
        (0x3f57fb11dcc0c35c, 0x3fee666666666666), (0x3f5661e909b6b0b8, 0x3fee666666666666), (0x3f54c8c036ac9e14, 0x3fee666666666666),
        (0x3f532f9763a28b74, 0x3fee666666666666), (0x3f51966e909878d0, 0x3fee666666666666), (0x3f4ffa8b7b1ccc58, 0x3fee666666666666),
        (0x3f4cc839d508a710, 0x3fee666666666666), (0x3f4995e82ef481c8, 0x3fee666666666666), (0x3f46639688e05c88, 0x3fee666666666666),
        (0x3f433144e2cc3740, 0x3fee666666666666), (0x3f3ffde6797023f0, 0x3fee666666666666), (0x3f3999432d47d960, 0x3fee666666666666),
        (0x3f33349fe11f8ed0, 0x3fee666666666666), (0x3f299ff929ee88a0, 0x3fee666666666666), (0x3f19ad65233be700, 0x3fee666666666666),
        (0x3e9ad7f29abcc000, 0x3fee666666666666),
    ]),
];

/// OneCycleLR(max_lr=0.5, total_steps=37, pct_start=0.25, div_factor=10, final_div_factor=100,
/// three_phase=True, cycle_momentum=False): lr after t steps.
#[rustfmt::skip]
const ONE_CYCLE_37: [u64; 37] = [
    0x3fa9999999999998, 0x3fb0ed0ecc6f2728, 0x3fbcb681e2d9cb54, 0x3fc73c6d9e000460,
    0x3fd0ea31aba7d8ae, 0x3fd64f4da7b04114, 0x3fdb07adb95c1b09, 0x3fde6633f7abfa0a,
    0x3fdfef4ec51fbdf7, 0x3fdf6aacc61c6428, 0x3fdceb4e5e6f4b44, 0x3fd8cccccccccccd,
    0x3fd3a63abb41b7c0, 0x3fcc68ff1bf3eba0, 0x3fc27e8e715a194b, 0x3fb5f19ca5e3e84a,
    0x3fabae8b5e03857b, 0x3fa98f14a273b826, 0x3fa93b5596614e6e, 0x3fa89602c0cfc48c,
    0x3fa7a364456023b9, 0x3fa669c2c50f9861, 0x3fa4f13db4948070, 0x3fa34395810624de,
    0x3fa16beae7e4e05d, 0x3f9eecea5e65499b, 0x3f9ae0624d9762c2, 0x3f96cd1618077739,
    0x3f92ce0b14ef5a83, 0x3f8dfb80a09a0330, 0x3f86eafdbaf75dc2, 0x3f80996461fc52ce,
    0x3f766133642481e0, 0x3f6b51ecd2c3b4a1, 0x3f5d0f88a2ba668c, 0x3f4ae2e737abe567,
    0x3f40624dd2f1a9fc,
];

/// CosineAnnealingWarmRestarts(T_0, T_mult, eta_min): lr after t = 0..40 calls to step().
#[rustfmt::skip]
const WARM_RESTARTS: [(usize, usize, f64, [u64; 40]); 3] = [
    (5, 2, 0.001, [
        0x3fb999999999999a, 0x3fb72e0b8651adaf, 0x3fb0d8076dbe38f3, 0x3fa20636c64e4e9f,
        0x3f8568ba549d9498, 0x3fb999999999999a, 0x3fb8fad365d67395, 0x3fb72e0b8651adaf,
        0x3fb4605cb70376bb, 0x3fb0d8076dbe38f3, 0x3fa9db22d0e56042, 0x3fa20636c64e4e9f,
        0x3f95eb186787a61d, 0x3f8568ba549d9498, 0x3f6c09ed61dd95af, 0x3fb999999999999a,
        0x3fb971a91bf64b12, 0x3fb8fad365d67395, 0x3fb838058c9a45d1, 0x3fb72e0b8651adaf,
        0x3fb5e371ed32626f, 0x3fb4605cb70376bb, 0x3fb2ae53e4ba2e01, 0x3fb0d8076dbe38f3,
        0x3fadd217c31dbe9c, 0x3fa9db22d0e56042, 0x3fa5e42ddead01eb, 0x3fa20636c64e4e9f,
        0x3f9cb33bb0acc903, 0x3f95eb186787a61d, 0x3f8fbd871d97ee98, 0x3f8568ba549d9498,
        0x3f7a31d444b1a70e, 0x3f6c09ed61dd95af, 0x3f5a5e6d3bc54bfc, 0x3fb999999999999a,
        0x3fb98f9988090db7, 0x3fb971a91bf64b12, 0x3fb93ff796548b03, 0x3fb8fad365d67395,
    ]),
    (3, 1, 0.0, [
        0x3fb999999999999a, 0x3fb3333333333334, 0x3f9999999999999d, 0x3fb999999999999a,
        0x3fb3333333333334, 0x3f9999999999999d, 0x3fb999999999999a, 0x3fb3333333333334,
        0x3f9999999999999d, 0x3fb999999999999a, 0x3fb3333333333334, 0x3f9999999999999d,
        0x3fb999999999999a, 0x3fb3333333333334, 0x3f9999999999999d, 0x3fb999999999999a,
        0x3fb3333333333334, 0x3f9999999999999d, 0x3fb999999999999a, 0x3fb3333333333334,
        0x3f9999999999999d, 0x3fb999999999999a, 0x3fb3333333333334, 0x3f9999999999999d,
        0x3fb999999999999a, 0x3fb3333333333334, 0x3f9999999999999d, 0x3fb999999999999a,
        0x3fb3333333333334, 0x3f9999999999999d, 0x3fb999999999999a, 0x3fb3333333333334,
        0x3f9999999999999d, 0x3fb999999999999a, 0x3fb3333333333334, 0x3f9999999999999d,
        0x3fb999999999999a, 0x3fb3333333333334, 0x3f9999999999999d, 0x3fb999999999999a,
    ]),
    (1, 3, 0.02, [
        0x3fb999999999999a, 0x3fb999999999999a, 0x3fb47ae147ae147b, 0x3fa47ae147ae147c,
        0x3fb999999999999a, 0x3fb8fb8200be22eb, 0x3fb7344caefaa908, 0x3fb47ae147ae147b,
        0x3fb1235e4786093f, 0x3fab29e747fe2af4, 0x3fa47ae147ae147c, 0x3f9e1014f229d6c2,
        0x3f96f33fab1bef3a, 0x3fb999999999999a, 0x3fb987dff04e2d1b, 0x3fb952f051a09287,
        0x3fb8fb8200be22eb, 0x3fb882c3ac5a63f1, 0x3fb7ea5756cf1b17, 0x3fb7344caefaa908,
        0x3fb66319ed6e96bb, 0x3fb579934ea2b3c2, 0x3fb47ae147ae147b, 0x3fb36a75976e08b6,
        0x3fb24bff59f48b29, 0x3fb1235e4786093f, 0x3fafe92a969bb06c, 0x3fad8779406e8d06,
        0x3fab29e747fe2af6, 0x3fa8d8a523212720, 0x3fa69bb8a82e2c06, 0x3fa47ae147ae147c,
        0x3fa27d7d39c4d5f0, 0x3fa0aa6ffc2d0ffc, 0x3f9e1014f229d6bf, 0x3f9b37ea52d80e88,
        0x3f98d638fcaaeb20, 0x3f96f33fab1bef3a, 0x3f959586679230c5, 0x3f94c1c7ecdbc676,
    ]),
];

/// CosineAnnealingWarmRestarts(T_0, T_mult, eta_min): lr after scheduler.step(epoch), each
/// epoch on a fresh scheduler.
/// (T_0, T_mult, eta_min, [(epoch, the bits of lr)]).
type RestartsAtEpochs = (usize, usize, f64, [(f64, u64); 11]);

#[rustfmt::skip]
const WARM_RESTARTS_EPOCHS: [RestartsAtEpochs; 3] = [
    (5, 2, 0.001, [
        (0.0, 0x3fb999999999999a), (0.5, 0x3fb8fad365d67395), (2.5, 0x3fa9db22d0e56042),
        (4.99, 0x3f506666f6be8532), (5.0, 0x3fb999999999999a), (7.3, 0x3fb66ef3cad034c1),
        (14.9, 0x3f50c8c03fcf8424), (15.0, 0x3fb999999999999a), (33.3, 0x3f6690696b96ed6f),
        (100.25, 0x3fb3dd49d2693e8d), (1000000.5, 0x3fa7cc0f7910aff3),
    ]),
    (3, 1, 0.0, [
        (0.0, 0x3fb999999999999a), (0.5, 0x3fb7e297902351df), (2.5, 0x3f7b702097647bba),
        (4.99, 0x3f9a10d389bf741a), (5.0, 0x3f9999999999999d), (7.3, 0x3faeec2b88da11cd),
        (14.9, 0x3f31f35e0309b067), (15.0, 0x3fb999999999999a), (33.3, 0x3fb8f938d481bb9d),
        (100.25, 0x3fb01ce5f383ce1d), (1000000.5, 0x3fa999999999999a),
    ]),
    (4, 3, 0.01, [
        (0.0, 0x3fb999999999999a), (0.5, 0x3fb8b91c9245660f), (2.5, 0x3fa357cd20278596),
        (4.99, 0x3fb937198578a5c8), (5.0, 0x3fb9351c75d2823b), (7.3, 0x3fb58fc7bd0a9375),
        (14.9, 0x3f884671c0cb1d85), (15.0, 0x3f879eca65e6cf75), (33.3, 0x3fad9109f7d45196),
        (100.25, 0x3faffee90cab5994), (1000000.5, 0x3f8809c65165ab33),
    ]),
];

/// The metrics stepped into ReduceLROnPlateau below.
const PLATEAU_METRICS: [f64; 26] = [
    1.0,
    0.9,
    0.95,
    0.9,
    0.89995,
    0.91,
    0.5,
    f64::NAN,
    0.6,
    0.7,
    0.8,
    0.49,
    0.49,
    0.49,
    0.49,
    0.49,
    0.49,
    0.49,
    0.49,
    0.49,
    0.49,
    0.49,
    f64::INFINITY,
    -0.3,
    0.2,
    0.1,
];

/// ReduceLROnPlateau(mode, threshold_mode, factor=0.5, patience=2, threshold, cooldown=1,
/// min_lr=0.004): (lr, num_bad_epochs) after each metric; then the best metric.
/// (mode, threshold_mode, threshold, [(the bits of lr, num_bad_epochs)], the bits of best).
type PlateauCase = (PlateauMode, ThresholdMode, f64, [(u64, usize); 26], u64);

#[rustfmt::skip]
const PLATEAU: [PlateauCase; 4] = [
    (PlateauMode::Min, ThresholdMode::Rel, 0.05, [
        (0x3fb999999999999a, 0), (0x3fb999999999999a, 0), (0x3fb999999999999a, 1), (0x3fb999999999999a, 2),
        (0x3fa999999999999a, 0), (0x3fa999999999999a, 0), (0x3fa999999999999a, 0), (0x3fa999999999999a, 1),
        (0x3fa999999999999a, 2), (0x3f9999999999999a, 0), (0x3f9999999999999a, 0), (0x3f9999999999999a, 1),
        (0x3f9999999999999a, 2), (0x3f8999999999999a, 0), (0x3f8999999999999a, 0), (0x3f8999999999999a, 1),
        (0x3f8999999999999a, 2), (0x3f7999999999999a, 0), (0x3f7999999999999a, 0), (0x3f7999999999999a, 1),
        (0x3f7999999999999a, 2), (0x3f70624dd2f1a9fc, 0), (0x3f70624dd2f1a9fc, 0), (0x3f70624dd2f1a9fc, 0),
        (0x3f70624dd2f1a9fc, 1), (0x3f70624dd2f1a9fc, 2),
    ], 0xbfd3333333333333),
    (PlateauMode::Min, ThresholdMode::Abs, 0.02, [
        (0x3fb999999999999a, 0), (0x3fb999999999999a, 0), (0x3fb999999999999a, 1), (0x3fb999999999999a, 2),
        (0x3fa999999999999a, 0), (0x3fa999999999999a, 0), (0x3fa999999999999a, 0), (0x3fa999999999999a, 1),
        (0x3fa999999999999a, 2), (0x3f9999999999999a, 0), (0x3f9999999999999a, 0), (0x3f9999999999999a, 1),
        (0x3f9999999999999a, 2), (0x3f8999999999999a, 0), (0x3f8999999999999a, 0), (0x3f8999999999999a, 1),
        (0x3f8999999999999a, 2), (0x3f7999999999999a, 0), (0x3f7999999999999a, 0), (0x3f7999999999999a, 1),
        (0x3f7999999999999a, 2), (0x3f70624dd2f1a9fc, 0), (0x3f70624dd2f1a9fc, 0), (0x3f70624dd2f1a9fc, 0),
        (0x3f70624dd2f1a9fc, 1), (0x3f70624dd2f1a9fc, 2),
    ], 0xbfd3333333333333),
    (PlateauMode::Max, ThresholdMode::Rel, 0.05, [
        (0x3fb999999999999a, 0), (0x3fb999999999999a, 1), (0x3fb999999999999a, 2), (0x3fa999999999999a, 0),
        (0x3fa999999999999a, 0), (0x3fa999999999999a, 1), (0x3fa999999999999a, 2), (0x3f9999999999999a, 0),
        (0x3f9999999999999a, 0), (0x3f9999999999999a, 1), (0x3f9999999999999a, 2), (0x3f8999999999999a, 0),
        (0x3f8999999999999a, 0), (0x3f8999999999999a, 1), (0x3f8999999999999a, 2), (0x3f7999999999999a, 0),
        (0x3f7999999999999a, 0), (0x3f7999999999999a, 1), (0x3f7999999999999a, 2), (0x3f70624dd2f1a9fc, 0),
        (0x3f70624dd2f1a9fc, 0), (0x3f70624dd2f1a9fc, 1), (0x3f70624dd2f1a9fc, 0), (0x3f70624dd2f1a9fc, 1),
        (0x3f70624dd2f1a9fc, 2), (0x3f70624dd2f1a9fc, 0),
    ], 0x7ff0000000000000),
    (PlateauMode::Max, ThresholdMode::Abs, 0.02, [
        (0x3fb999999999999a, 0), (0x3fb999999999999a, 1), (0x3fb999999999999a, 2), (0x3fa999999999999a, 0),
        (0x3fa999999999999a, 0), (0x3fa999999999999a, 1), (0x3fa999999999999a, 2), (0x3f9999999999999a, 0),
        (0x3f9999999999999a, 0), (0x3f9999999999999a, 1), (0x3f9999999999999a, 2), (0x3f8999999999999a, 0),
        (0x3f8999999999999a, 0), (0x3f8999999999999a, 1), (0x3f8999999999999a, 2), (0x3f7999999999999a, 0),
        (0x3f7999999999999a, 0), (0x3f7999999999999a, 1), (0x3f7999999999999a, 2), (0x3f70624dd2f1a9fc, 0),
        (0x3f70624dd2f1a9fc, 0), (0x3f70624dd2f1a9fc, 1), (0x3f70624dd2f1a9fc, 0), (0x3f70624dd2f1a9fc, 1),
        (0x3f70624dd2f1a9fc, 2), (0x3f70624dd2f1a9fc, 0),
    ], 0x7ff0000000000000),
];
#[test]
fn one_cycle_is_pytorchs_in_both_strategies_and_three_phases() {
    for (three_phase, anneal_strategy, steps) in ONE_CYCLE {
        let s = OneCycleLr {
            anneal_strategy,
            three_phase,
            ..OneCycleLr::new(0.1, 100)
        };
        s.check().expect("PyTorch takes these settings");
        for (t, (lr, momentum)) in steps.into_iter().enumerate() {
            let what = format!("three_phase {three_phase}, {anneal_strategy:?}, step {t}");
            assert_eq!(bits(s.lr(t)), lr, "lr, {what}");
            assert_eq!(s.momentum(t).map(bits), Some(momentum), "momentum, {what}");
        }
    }
    let s = OneCycleLr {
        pct_start: 0.25,
        div_factor: 10.0,
        final_div_factor: 100.0,
        cycle_momentum: false,
        three_phase: true,
        ..OneCycleLr::new(0.5, 37)
    };
    s.check().expect("PyTorch takes these settings");
    for (t, lr) in ONE_CYCLE_37.into_iter().enumerate() {
        assert_eq!(bits(s.lr(t)), lr, "step {t}");
        assert_eq!(s.momentum(t), None);
    }
}

#[test]
fn warm_restarts_are_pytorchs_step_by_step_and_at_fractional_epochs() {
    for (t_0, t_mult, eta_min, steps) in WARM_RESTARTS {
        let s = CosineAnnealingWarmRestarts {
            base_lr: 0.1,
            t_0,
            t_mult,
            eta_min,
        };
        s.check().expect("PyTorch takes these settings");
        for (t, lr) in steps.into_iter().enumerate() {
            assert_eq!(bits(s.lr(t)), lr, "T_0 {t_0}, T_mult {t_mult}, step {t}");
        }
    }
    for (t_0, t_mult, eta_min, epochs) in WARM_RESTARTS_EPOCHS {
        let s = CosineAnnealingWarmRestarts {
            base_lr: 0.1,
            t_0,
            t_mult,
            eta_min,
        };
        for (epoch, lr) in epochs {
            let got = s.lr_at_epoch(epoch).expect("a non-negative epoch");
            assert_eq!(bits(got), lr, "T_0 {t_0}, T_mult {t_mult}, epoch {epoch}");
        }
    }
}

/// Each step's rate and bad-step count are PyTorch's, in the four modes, through a NaN and an
/// infinite metric, cool-downs and `min_lr`; the state saved to JSON and read back after every
/// step (as a checkpoint would) carries on the same way, infinite best included.
#[test]
fn reduce_on_plateau_is_pytorchs_and_resumes_from_its_saved_state() {
    for (mode, threshold_mode, threshold, steps, best) in PLATEAU {
        let config = PlateauConfig {
            mode,
            threshold_mode,
            threshold,
            factor: 0.5,
            patience: 2,
            cooldown: 1,
            min_lr: 0.004,
            ..Default::default()
        };
        let fresh = ReduceLrOnPlateau::new(0.1, config).expect("PyTorch takes these settings");
        let (mut kept, mut resumed) = (fresh.clone(), fresh);
        for (i, (metric, (lr, bad))) in PLATEAU_METRICS.into_iter().zip(steps).enumerate() {
            let what = format!("{mode:?} {threshold_mode:?}, step {i} (metric {metric})");
            assert_eq!(bits(kept.step(metric)), lr, "lr, {what}");
            assert_eq!(kept.num_bad_epochs(), bad, "num_bad_epochs, {what}");
            let saved = serde_json::to_string(&resumed).expect("serialisable");
            resumed = serde_json::from_str(&saved).expect("reads back");
            assert_eq!(
                bits(resumed.step(metric)),
                lr,
                "resumed lr, {what}: {saved}"
            );
            assert_eq!(resumed.num_bad_epochs(), bad, "resumed, {what}");
        }
        assert_eq!(kept.best().map(bits), Some(best));
        assert_eq!(resumed.best().map(bits), Some(best));
        assert_eq!(kept.steps(), PLATEAU_METRICS.len());
    }
}
