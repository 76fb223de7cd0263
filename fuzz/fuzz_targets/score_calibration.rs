//! A bundle's `score_calibration.json`: any text parses to a checked calibration or an
//! error naming the file, never a panic; a checked one gives every score a `p` in
//! [0, 1], never NaN, at its own prior and at any usable one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sen_core::scores::bundle::ScoreCalibrationFile;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(f) = ScoreCalibrationFile::parse(s, std::path::Path::new("score_calibration.json"))
    else {
        return;
    };
    for fit in [&f.text, &f.image] {
        let knots = fit.curve.z.iter().copied();
        let zs = [f64::MIN, -1e300, -1.0, 0.0, 0.5, 1e300, f64::MAX];
        for z in knots.chain(zs) {
            for prior in [fit.prior, 1e-9, 0.5, 1.0 - 1e-9] {
                let p = fit.curve.p(z, prior);
                assert!((0.0..=1.0).contains(&p), "p {p} at z {z}, prior {prior}");
            }
        }
    }
});
