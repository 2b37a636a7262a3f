//! Colour maps from a value in `0..=1` to an RGB colour.

use plotters::style::RGBColor;

/// Colour maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMap {
    /// Black (low) to white (high), as matplotlib's `gray`.
    Gray,
    /// matplotlib's `viridis`: dark purple (low) through teal to yellow (high).
    Viridis,
}

/// Every 8th entry (plus the last) of matplotlib's 256-entry `_viridis_data` table, keyed by
/// its index; linear interpolation between them stays within 2/255 of the full table.
const VIRIDIS: [(u8, [f32; 3]); 33] = [
    (0, [0.267004, 0.004874, 0.329415]),
    (8, [0.277018, 0.050344, 0.375715]),
    (16, [0.282327, 0.094955, 0.417331]),
    (24, [0.282884, 0.135920, 0.453427]),
    (32, [0.278826, 0.175490, 0.483397]),
    (40, [0.270595, 0.214069, 0.507052]),
    (48, [0.258965, 0.251537, 0.524736]),
    (56, [0.244972, 0.287675, 0.537260]),
    (64, [0.229739, 0.322361, 0.545706]),
    (72, [0.214298, 0.355619, 0.551184]),
    (80, [0.199430, 0.387607, 0.554642]),
    (88, [0.185556, 0.418570, 0.556753]),
    (96, [0.172719, 0.448791, 0.557885]),
    (104, [0.160665, 0.478540, 0.558115]),
    (112, [0.149039, 0.508051, 0.557250]),
    (120, [0.137770, 0.537492, 0.554906]),
    (128, [0.127568, 0.566949, 0.550556]),
    (136, [0.120565, 0.596422, 0.543611]),
    (144, [0.120638, 0.625828, 0.533488]),
    (152, [0.132268, 0.655014, 0.519661]),
    (160, [0.157851, 0.683765, 0.501686]),
    (168, [0.196571, 0.711827, 0.479221]),
    (176, [0.246070, 0.738910, 0.452024]),
    (184, [0.304148, 0.764704, 0.419943]),
    (192, [0.369214, 0.788888, 0.382914]),
    (200, [0.440137, 0.811138, 0.340967]),
    (208, [0.515992, 0.831158, 0.294279]),
    (216, [0.595839, 0.848717, 0.243329]),
    (224, [0.678489, 0.863742, 0.189503]),
    (232, [0.762373, 0.876424, 0.137064]),
    (240, [0.845561, 0.887322, 0.099702]),
    (248, [0.926106, 0.897330, 0.104071]),
    (255, [0.993248, 0.906157, 0.143936]),
];

impl ColorMap {
    /// The colour of `t`, clamped to `0..=1` (NaN maps to the low end).
    pub fn rgb(self, t: f32) -> [u8; 3] {
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        match self {
            ColorMap::Gray => {
                let v = to_byte(t);
                [v, v, v]
            }
            ColorMap::Viridis => viridis(t),
        }
    }

    /// The colour of `value` after scaling `lo..=hi` to `0..=1`; a flat range (`lo == hi`)
    /// maps every value to the low end, as matplotlib's `Normalize` does.
    pub fn scaled(self, value: f32, lo: f32, hi: f32) -> [u8; 3] {
        let t = if hi > lo {
            (value - lo) / (hi - lo)
        } else {
            0.0
        };
        self.rgb(t)
    }
}

fn viridis(t: f32) -> [u8; 3] {
    let x = t * 255.0;
    let upper = VIRIDIS
        .iter()
        .position(|(index, _)| f32::from(*index) >= x)
        .unwrap_or(VIRIDIS.len() - 1)
        .max(1);
    let (i0, c0) = VIRIDIS[upper - 1];
    let (i1, c1) = VIRIDIS[upper];
    let a = (x - f32::from(i0)) / f32::from(i1 - i0);
    let mix = |k: usize| to_byte(c0[k] + (c1[k] - c0[k]) * a);
    [mix(0), mix(1), mix(2)]
}

fn to_byte(t: f32) -> u8 {
    (t.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Black or white, whichever reads better on `background` (by relative luminance).
pub(crate) fn contrast_text(background: [u8; 3]) -> RGBColor {
    let [r, g, b] = background.map(f32::from);
    let luminance = 0.299 * r + 0.587 * g + 0.114 * b;
    if luminance > 140.0 {
        RGBColor(0, 0, 0)
    } else {
        RGBColor(255, 255, 255)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [u8; 3], b: [u8; 3]) -> bool {
        a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 2)
    }

    #[test]
    fn viridis_matches_matplotlib() {
        assert_eq!(ColorMap::Viridis.rgb(0.0), [68, 1, 84]);
        assert_eq!(ColorMap::Viridis.rgb(1.0), [253, 231, 37]);
        // matplotlib: viridis(0.5) = _viridis_data[128] = (0.127568, 0.566949, 0.550556).
        assert!(close(ColorMap::Viridis.rgb(0.5), [33, 145, 140]));
        // _viridis_data[64] = (0.229739, 0.322361, 0.545706).
        assert!(close(ColorMap::Viridis.rgb(64.0 / 255.0), [59, 82, 139]));
    }

    #[test]
    fn gray_and_clamping() {
        assert_eq!(ColorMap::Gray.rgb(0.0), [0, 0, 0]);
        assert_eq!(ColorMap::Gray.rgb(1.0), [255, 255, 255]);
        assert_eq!(ColorMap::Gray.rgb(2.0), [255, 255, 255]);
        assert_eq!(ColorMap::Gray.rgb(f32::NAN), [0, 0, 0]);
        assert_eq!(ColorMap::Gray.scaled(3.0, 3.0, 3.0), [0, 0, 0]);
        assert_eq!(ColorMap::Gray.scaled(5.0, 3.0, 7.0), [128, 128, 128]);
    }

    #[test]
    fn text_contrasts_with_background() {
        assert_eq!(contrast_text([0, 0, 0]), RGBColor(255, 255, 255));
        assert_eq!(contrast_text([255, 255, 255]), RGBColor(0, 0, 0));
        assert_eq!(
            contrast_text(ColorMap::Viridis.rgb(0.0)),
            RGBColor(255, 255, 255)
        );
        assert_eq!(contrast_text(ColorMap::Viridis.rgb(1.0)), RGBColor(0, 0, 0));
    }
}
