//! `nn.Conv2d`'s `padding_mode` and `padding='same'`: the input padded explicitly (as PyTorch's
//! `_conv_forward` does with `F.pad`), then the plain convolution.

use candle_core::{Result, Tensor};

use super::Conv2d;
use crate::memory_format;

/// How a convolution pads its input: PyTorch's `padding_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingMode {
    /// `'zeros'` (the default).
    #[default]
    Zeros,
    /// `'reflect'`: the input mirrored about its edge row (not repeating it), `F.pad(mode=
    /// 'reflect')`; the padding must be smaller than the input's side.
    Reflect,
    /// `'replicate'`: the edge row repeated.
    Replicate,
    /// `'circular'`: the input wrapped around (the last rows before the first); the padding
    /// must not exceed the input's side.
    Circular,
}

impl std::str::FromStr for PaddingMode {
    type Err = candle_core::Error;

    /// PyTorch's names: `zeros`, `reflect`, `replicate`, `circular`.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "zeros" => Self::Zeros,
            "reflect" => Self::Reflect,
            "replicate" => Self::Replicate,
            "circular" => Self::Circular,
            other => candle_core::bail!(
                "padding_mode must be one of 'zeros', 'reflect', 'replicate' or 'circular', got \
                 {other:?}"
            ),
        })
    }
}

/// `x` padded along `dim` by `before` and `after` values in `mode` (zeros too, where asked), as
/// `F.pad` pads; errors name the sizes PyTorch refuses, and `input`, the convolution's input.
fn pad(
    x: &Tensor,
    dim: usize,
    (before, after): (usize, usize),
    mode: PaddingMode,
    input: &[usize],
) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let n = x.dim(dim)?;
    match mode {
        PaddingMode::Zeros => x.pad_with_zeros(dim, before, after),
        PaddingMode::Replicate => {
            if n == 0 {
                candle_core::bail!(
                    "padding_mode 'replicate': dimension {dim} of the input {input:?} is empty"
                )
            }
            // An empty batch: its empty padded shape (Candle's `pad_with_same` refuses it).
            if x.elem_count() == 0 {
                return x.pad_with_zeros(dim, before, after);
            }
            x.pad_with_same(dim, before, after)
        }
        PaddingMode::Reflect => {
            if before >= n || after >= n {
                candle_core::bail!(
                    "padding_mode 'reflect': the padding ({before}, {after}) of dimension {dim} \
                     must be smaller than its size {n} (input {input:?}), as F.pad requires"
                )
            }
            // Rows before-1..=1 reversed ahead, n-2 down to n-1-after behind.
            let left: Vec<u32> = (1..=before).rev().map(|i| i as u32).collect();
            let right: Vec<u32> = (0..after).map(|i| (n - 2 - i) as u32).collect();
            let take = |idx: Vec<u32>| -> Result<Tensor> {
                let len = idx.len();
                x.index_select(&Tensor::from_vec(idx, len, x.device())?, dim)
            };
            Tensor::cat(&[&take(left)?, x, &take(right)?], dim)
        }
        PaddingMode::Circular => {
            if before > n || after > n {
                candle_core::bail!(
                    "padding_mode 'circular': the padding ({before}, {after}) of dimension {dim} \
                     must not exceed its size {n} (input {input:?}), as F.pad requires"
                )
            }
            let left = x.narrow(dim, n - before, before)?;
            let right = x.narrow(dim, 0, after)?;
            Tensor::cat(&[&left, x, &right], dim)
        }
    }
}

impl Conv2d {
    /// The same convolution padding its input in `mode` (PyTorch's `padding_mode`): by the
    /// configured padding on every side, or as [`Conv2d::with_padding_same`] says.
    ///
    /// ```
    /// use candle_core::{Device, Module, Tensor};
    /// use layers::{conv_cfg, Conv2d, PaddingMode};
    ///
    /// let w = Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
    /// let conv = Conv2d::new(w, None, conv_cfg(1, 1)).with_padding_mode(PaddingMode::Circular);
    /// let x = Tensor::arange(0f32, 9.0, &Device::Cpu)?.reshape((1, 1, 3, 3))?;
    /// // Each output sums its 3x3 neighbourhood on a 3x3 torus: the whole image, 36.
    /// let y = conv.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
    /// assert_eq!(y, [36.0; 9]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn with_padding_mode(self, mode: PaddingMode) -> Self {
        Self {
            padding_mode: mode,
            ..self
        }
    }

    /// The same convolution with PyTorch's `padding='same'`: an output the input's size, each
    /// axis padded by `dilation * (kernel - 1)` (the kernel's height, then its width), split
    /// with the odd one (an even kernel's) on the bottom and right, as PyTorch splits it. The
    /// configured padding is replaced.
    ///
    /// Errors: a stride other than 1 (PyTorch: "padding='same' is not supported for strided
    /// convolutions").
    pub fn with_padding_same(self) -> Result<Self> {
        let c = self.config;
        if c.stride != 1 {
            candle_core::bail!(
                "padding='same' is not supported for strided convolutions (stride {}), as in \
                 PyTorch",
                c.stride
            )
        }
        let (_, _, kh, kw) = self.weight.dims4()?;
        let total = |k: usize| c.dilation * k.saturating_sub(1);
        let split = |t: usize| (t / 2, t - t / 2);
        let (th, tw) = (total(kh), total(kw));
        // Square and even: the convolution's own symmetric padding.
        let (padding, same_padding) = match th == tw && th % 2 == 0 {
            true => (th / 2, None),
            false => (0, Some([split(th), split(tw)])),
        };
        Ok(Self {
            config: candle_nn::Conv2dConfig { padding, ..c },
            same_padding,
            ..self
        })
    }

    /// The padding mode (PyTorch's `padding_mode`).
    pub fn padding_mode(&self) -> PaddingMode {
        self.padding_mode
    }

    /// Where this convolution pads its input itself (a mode other than zeros, or `'same'`'s
    /// uneven padding): the padded input and the plain convolution that takes it; `None` where
    /// the convolution's own zero padding does.
    pub(super) fn explicit_padding(&self, xs: &Tensor) -> Result<Option<(Tensor, Conv2d)>> {
        let p = self.config.padding;
        let pads = match self.same_padding {
            Some(pads) => pads,
            None if self.padding_mode == PaddingMode::Zeros || p == 0 => return Ok(None),
            None => [(p, p); 2],
        };
        if xs.rank() != 4 {
            candle_core::bail!(
                "conv2d: input of shape {:?}, expected (N, C, H, W)",
                xs.dims()
            )
        }
        let channels_last = memory_format::is_channels_last(xs);
        // (Candle's `index_select` takes contiguous tensors only.)
        let mut x = xs.contiguous()?;
        for (dim, pad_dim) in [2, 3].into_iter().zip(pads) {
            x = pad(&x, dim, pad_dim, self.padding_mode, xs.dims())?;
        }
        if channels_last {
            x = memory_format::to_channels_last(&x)?;
        }
        let plain = Conv2d {
            config: candle_nn::Conv2dConfig {
                padding: 0,
                ..self.config
            },
            padding_mode: PaddingMode::Zeros,
            same_padding: None,
            ..self.clone()
        };
        Ok(Some((x, plain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, ModuleT, Var};

    /// PyTorch 2.15's `nn.Conv2d(2, 3, k, padding, dilation, padding_mode=mode)` in float64 on
    /// a (2, 2, 5, 6) input (the formulas below, as the script that gave these made them):
    /// the output's shape; its sum and element 7; for the loss `sum(y * g)`, the input
    /// gradient's sum and its dot product with the input, the weight gradient's sum. Cases:
    /// `"3"` kernel 3 padding 1, `"3p2"` kernel 3 padding 2, `"same4"` kernel 4 with
    /// `padding='same'` (the odd padding at the bottom and right), `"same3d2"` kernel 3,
    /// dilation 2, `'same'`; `"same1x3"` and `"same2x4"` non-square kernels with `'same'`.
    const PYTORCH: &[(&str, &str, [usize; 4], [f64; 5])] = &[
        (
            "zeros",
            "same1x3",
            [2, 3, 5, 6],
            [
                -809.3769924751202,
                3.9088410833728524,
                13.084622780136705,
                -443.25405938172736,
                -357.40858567316536,
            ],
        ),
        (
            "zeros",
            "same2x4",
            [2, 3, 5, 6],
            [
                567.930693997534,
                -23.729055820933624,
                -0.1884612151981816,
                252.6479875303278,
                -1067.2580611961098,
            ],
        ),
        (
            "reflect",
            "same1x3",
            [2, 3, 5, 6],
            [
                -910.882863901701,
                3.9088410833728524,
                14.952386284692642,
                -492.1663986498721,
                -401.117304998122,
            ],
        ),
        (
            "reflect",
            "same2x4",
            [2, 3, 5, 6],
            [
                533.9478850777392,
                -23.729055820933624,
                -1.6949324533548942,
                342.3568381505316,
                -1058.372231814478,
            ],
        ),
        (
            "replicate",
            "same1x3",
            [2, 3, 5, 6],
            [
                -910.6035740868838,
                3.9088410833728524,
                14.952386284692642,
                -491.37537978842624,
                -400.6019269575666,
            ],
        ),
        (
            "replicate",
            "same2x4",
            [2, 3, 5, 6],
            [
                510.9719243859561,
                -23.729055820933624,
                -1.6949324533548955,
                345.5720337829123,
                -1054.1317621393591,
            ],
        ),
        (
            "circular",
            "same1x3",
            [2, 3, 5, 6],
            [
                -908.4250427667794,
                3.9088410833728524,
                14.952386284692642,
                -491.63138182126875,
                -400.68236951055775,
            ],
        ),
        (
            "circular",
            "same2x4",
            [2, 3, 5, 6],
            [
                511.85053047046966,
                -23.729055820933624,
                -1.6949324533548942,
                344.0377522046013,
                -1103.834654149544,
            ],
        ),
        (
            "zeros",
            "3",
            [2, 3, 5, 6],
            [
                -2304.9112043312016,
                -17.893166982328577,
                5.52468148900285,
                46.75072535662019,
                -1039.1803132496718,
            ],
        ),
        (
            "zeros",
            "3p2",
            [2, 3, 7, 8],
            [
                -2839.8410371680725,
                -0.5470319779826586,
                -66.94906767786415,
                -638.0419900519295,
                1221.5379597066906,
            ],
        ),
        (
            "zeros",
            "same4",
            [2, 3, 5, 6],
            [
                614.7201770439005,
                0.5617827464799883,
                117.30252637624773,
                1085.7145512782035,
                -1954.959709995932,
            ],
        ),
        (
            "zeros",
            "same3d2",
            [2, 3, 5, 6],
            [
                -1799.7548571088585,
                -6.879516075768612,
                4.898823179426893,
                42.71275558385263,
                -774.0295829775295,
            ],
        ),
        (
            "reflect",
            "3",
            [2, 3, 5, 6],
            [
                -2962.6212132564883,
                -17.893166982328577,
                5.167316383118724,
                41.16867219619682,
                -1204.5838945883381,
            ],
        ),
        (
            "reflect",
            "3p2",
            [2, 3, 7, 8],
            [
                -5375.100985775001,
                -20.158072143296803,
                0.522589817867626,
                -88.75091749286639,
                -1974.4038112176343,
            ],
        ),
        (
            "reflect",
            "same4",
            [2, 3, 5, 6],
            [
                -46.90373627319029,
                0.5617827464799883,
                -10.536724028970653,
                260.7867277617718,
                -2174.366182045924,
            ],
        ),
        (
            "reflect",
            "same3d2",
            [2, 3, 5, 6],
            [
                -2966.035225058118,
                -25.452575917509893,
                5.167316383118725,
                47.607440187259904,
                -1269.9547924709063,
            ],
        ),
        (
            "replicate",
            "3",
            [2, 3, 5, 6],
            [
                -2966.4454867059967,
                -17.893166982328577,
                5.167316383118724,
                40.15726490914263,
                -1211.9868603416053,
            ],
        ),
        (
            "replicate",
            "3p2",
            [2, 3, 7, 8],
            [
                -5479.535058261157,
                -13.333390077308556,
                0.5225898178676367,
                130.7613090438577,
                -2615.147928623719,
            ],
        ),
        (
            "replicate",
            "same4",
            [2, 3, 5, 6],
            [
                -230.36977363491633,
                0.5617827464799883,
                -10.536724028970655,
                139.2138076191054,
                -2139.3692784688346,
            ],
        ),
        (
            "replicate",
            "same3d2",
            [2, 3, 5, 6],
            [
                -3056.563044623999,
                -19.463192098426664,
                5.167316383118726,
                37.96987342151215,
                -1242.7604043712167,
            ],
        ),
        (
            "circular",
            "3",
            [2, 3, 5, 6],
            [
                -2850.2410371680726,
                -17.893166982328577,
                5.167316383118722,
                41.83339858395816,
                -1262.582964138151,
            ],
        ),
        (
            "circular",
            "3p2",
            [2, 3, 7, 8],
            [
                -5190.088901949206,
                -17.482175158441898,
                0.522589817867626,
                -95.66191664343054,
                -506.7424750388902,
            ],
        ),
        (
            "circular",
            "same4",
            [2, 3, 5, 6],
            [
                290.9278583281537,
                0.5617827464799883,
                -10.536724028970644,
                342.80540927024737,
                -2303.6102556380065,
            ],
        ),
        (
            "circular",
            "same3d2",
            [2, 3, 5, 6],
            [
                -2850.2410371680726,
                -20.218405866348213,
                5.167316383118724,
                45.35905297766502,
                -1326.884596378604,
            ],
        ),
    ];

    fn formula(n: usize, f: impl Fn(usize) -> f64) -> Vec<f64> {
        (0..n).map(f).collect()
    }

    #[test]
    fn padding_modes_and_same_match_pytorch() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::from_vec(
            formula(120, |i| (i as f64 * 0.7).sin() + 0.1 * i as f64),
            (2, 2, 5, 6),
            &dev,
        )?;
        for &(mode, case, shape, want) in PYTORCH {
            let mode: PaddingMode = mode.parse()?;
            let ((kh, kw), padding, dilation, same) = match case {
                "3" => ((3, 3), 1, 1, false),
                "3p2" => ((3, 3), 2, 1, false),
                "same4" => ((4, 4), 0, 1, true),
                "same1x3" => ((1, 3), 0, 1, true),
                "same2x4" => ((2, 4), 0, 1, true),
                _ => ((3, 3), 0, 2, true),
            };
            let w = Var::from_tensor(&Tensor::from_vec(
                formula(3 * 2 * kh * kw, |i| (i as f64 * 0.3).cos()),
                (3, 2, kh, kw),
                &dev,
            )?)?;
            let b = Var::from_tensor(&Tensor::new(&[0.1f64, -0.2, 0.3], &dev)?)?;
            let cfg = candle_nn::Conv2dConfig {
                padding,
                dilation,
                ..Default::default()
            };
            let mut conv = Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg)
                .with_padding_mode(mode);
            if same {
                conv = conv.with_padding_same()?;
            }
            let x = Var::from_tensor(&x0)?;
            let y = conv.forward(x.as_tensor())?;
            assert_eq!(y.dims(), shape, "{mode:?} {case}");
            let g = Tensor::from_vec(
                formula(y.elem_count(), |i| (i as f64 * 0.11).sin()),
                y.shape(),
                &dev,
            )?;
            let grads = (&y * &g)?.sum_all()?.backward()?;
            let gx = grads.get(x.as_tensor()).expect("input gradient");
            let gw = grads.get(w.as_tensor()).expect("weight gradient");
            let got = [
                y.sum_all()?.to_scalar::<f64>()?,
                y.flatten_all()?.get(7)?.to_scalar::<f64>()?,
                gx.sum_all()?.to_scalar::<f64>()?,
                (gx * &x0)?.sum_all()?.to_scalar::<f64>()?,
                gw.sum_all()?.to_scalar::<f64>()?,
            ];
            for (what, (g, w)) in ["y", "y[7]", "dx", "dx.x", "dw"]
                .iter()
                .zip(got.iter().zip(want))
            {
                assert!(
                    (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                    "{mode:?} {case} {what}: {g} against PyTorch's {w}"
                );
            }
        }
        Ok(())
    }

    /// In float32 (the programs' dtype, through the CPU kernels) and channels-last, unbatched,
    /// under a fused batch norm: the same as the padded input through the plain convolution.
    #[test]
    fn every_path_pads_alike() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 16, 7, 7), &dev)?;
        let w = Tensor::randn(0f32, 0.2, (16, 16, 3, 3), &dev)?;
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        for mode in [
            PaddingMode::Reflect,
            PaddingMode::Replicate,
            PaddingMode::Circular,
        ] {
            let conv = Conv2d::new(w.clone(), None, cfg).with_padding_mode(mode);
            let mut padded = x.clone();
            for dim in [2, 3] {
                padded = pad(&padded, dim, (1, 1), mode, x.dims())?;
            }
            let plain = Conv2d::new(w.clone(), None, candle_nn::Conv2dConfig::default());
            let want = plain.forward(&padded)?;
            let close = |a: &Tensor, what: &str| -> Result<()> {
                let d = (a - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-5, "{mode:?} {what}: {d}");
                Ok(())
            };
            close(&conv.forward(&x)?, "NCHW")?;
            let cl = conv.forward(&memory_format::to_channels_last(&x)?)?;
            assert!(memory_format::is_channels_last(&cl), "{mode:?}");
            close(&cl.contiguous()?, "channels-last")?;
            let one = conv.forward(&x.get(1)?)?;
            let d = (one - want.get(1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{mode:?} unbatched: {d}");
            // Evaluation-mode batch norm after it (fused where the path allows).
            let store = crate::ParamStore::new(0, &dev);
            let bn = crate::batch_norm(store.vb().pp("bn"), 16, 1e-5)?;
            let fused = conv.forward_batch_norm(&x, &bn, true, false)?;
            let apart = crate::activation::relu(&bn.forward_t(&want, false)?)?;
            let d = (fused - apart)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{mode:?} with batch norm: {d}");
        }
        // PyTorch's refusals.
        let conv = Conv2d::new(
            w.clone(),
            None,
            candle_nn::Conv2dConfig {
                padding: 7,
                ..Default::default()
            },
        );
        let err = conv
            .clone()
            .with_padding_mode(PaddingMode::Reflect)
            .forward(&x)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("must be smaller than its size 7 (input [2, 16, 7, 7])"),
            "{err}"
        );
        // An empty batch in every mode: PyTorch's empty output, zero gradients for the kernel.
        let kernel = Var::from_tensor(&Tensor::randn(0f32, 0.2, (4, 16, 3, 3), &dev)?)?;
        for mode in [
            PaddingMode::Reflect,
            PaddingMode::Replicate,
            PaddingMode::Circular,
        ] {
            for dilation in [1, 2] {
                let cfg = candle_nn::Conv2dConfig {
                    padding: 1,
                    dilation,
                    ..Default::default()
                };
                let conv =
                    Conv2d::new(kernel.as_tensor().clone(), None, cfg).with_padding_mode(mode);
                let y = conv.forward(&Tensor::zeros((0, 16, 5, 6), DType::F32, &dev)?)?;
                let want = if dilation == 1 {
                    [0, 4, 5, 6]
                } else {
                    [0, 4, 3, 4]
                };
                assert_eq!(y.dims(), want, "{mode:?}");
                let grads = y.sum_all()?.backward()?;
                let g = grads.get(kernel.as_tensor()).expect("kernel gradient");
                assert_eq!(g.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
            }
        }
        let err = conv
            .with_padding_mode(PaddingMode::Circular)
            .forward(&x.narrow(2, 0, 6)?)
            .unwrap_err();
        assert!(err.to_string().contains("must not exceed"), "{err}");
        let strided = Conv2d::new(
            w,
            None,
            candle_nn::Conv2dConfig {
                stride: 2,
                ..Default::default()
            },
        );
        assert!(strided.with_padding_same().is_err());
        assert!("mirror".parse::<PaddingMode>().is_err());
        Ok(())
    }
}
