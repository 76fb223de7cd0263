//! Procedural pedestrian rendering: anti-aliased shapes painted back to front on
//! a cluttered background, then lighting, occlusion, blur, noise and JPEG.

use super::{Attributes, BAG_COLOURS, CLOTHES, HAIR, HAT_COLOURS, SHOE_COLOURS, SKIN};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Front,
    Back,
    Side,
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[f32; 3]>,
}

fn rgb(c: [u8; 3]) -> [f32; 3] {
    [c[0] as f32, c[1] as f32, c[2] as f32]
}

fn shade(c: [f32; 3], f: f32) -> [f32; 3] {
    [c[0] * f, c[1] * f, c[2] * f]
}

impl Canvas {
    /// Paint a shape given by its signed distance (pixels, negative inside) over a
    /// bounding box, with colour from `fill(x, y)`; edges anti-aliased over 1 px.
    fn paint(
        &mut self,
        bbox: (f32, f32, f32, f32),
        sdf: impl Fn(f32, f32) -> f32,
        fill: impl Fn(f32, f32) -> [f32; 3],
    ) {
        let x0 = (bbox.0 - 1.0).floor().max(0.0) as usize;
        let y0 = (bbox.1 - 1.0).floor().max(0.0) as usize;
        let x1 = ((bbox.2 + 2.0).ceil() as usize).min(self.w);
        let y1 = ((bbox.3 + 2.0).ceil() as usize).min(self.h);
        for y in y0..y1 {
            for x in x0..x1 {
                let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                let a = (0.5 - sdf(fx, fy)).clamp(0.0, 1.0);
                if a > 0.0 {
                    let c = fill(fx, fy);
                    let p = &mut self.px[y * self.w + x];
                    for i in 0..3 {
                        p[i] = p[i] * (1.0 - a) + c[i] * a;
                    }
                }
            }
        }
    }

    fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, fill: impl Fn(f32, f32) -> [f32; 3]) {
        let r = rx.min(ry);
        self.paint(
            (cx - rx, cy - ry, cx + rx, cy + ry),
            |x, y| {
                let (dx, dy) = ((x - cx) / rx, (y - cy) / ry);
                ((dx * dx + dy * dy).sqrt() - 1.0) * r
            },
            fill,
        );
    }

    /// A line segment of radius `r` with round ends.
    fn capsule(
        &mut self,
        a: (f32, f32),
        b: (f32, f32),
        r: f32,
        fill: impl Fn(f32, f32) -> [f32; 3],
    ) {
        let bbox = (
            a.0.min(b.0) - r,
            a.1.min(b.1) - r,
            a.0.max(b.0) + r,
            a.1.max(b.1) + r,
        );
        let (vx, vy) = (b.0 - a.0, b.1 - a.1);
        let len2 = (vx * vx + vy * vy).max(1e-6);
        self.paint(
            bbox,
            |x, y| {
                let t = (((x - a.0) * vx + (y - a.1) * vy) / len2).clamp(0.0, 1.0);
                let (dx, dy) = (x - a.0 - t * vx, y - a.1 - t * vy);
                (dx * dx + dy * dy).sqrt() - r
            },
            fill,
        );
    }

    /// Axis-aligned rectangle with rounded corners of radius `r`.
    fn rect(
        &mut self,
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        r: f32,
        fill: impl Fn(f32, f32) -> [f32; 3],
    ) {
        let (cx, cy, hx, hy) = (
            (x0 + x1) / 2.0,
            (y0 + y1) / 2.0,
            (x1 - x0) / 2.0,
            (y1 - y0) / 2.0,
        );
        let r = r.min(hx).min(hy).max(0.0);
        self.paint(
            (x0, y0, x1, y1),
            |x, y| {
                let qx = (x - cx).abs() - hx + r;
                let qy = (y - cy).abs() - hy + r;
                let out = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
                out + qx.max(qy).min(0.0) - r
            },
            fill,
        );
    }

    #[allow(clippy::too_many_arguments)]
    /// A trapezoid: top edge y0 from xa0..xa1, bottom edge y1 from xb0..xb1.
    fn trapezoid(
        &mut self,
        y0: f32,
        xa0: f32,
        xa1: f32,
        y1: f32,
        xb0: f32,
        xb1: f32,
        fill: impl Fn(f32, f32) -> [f32; 3],
    ) {
        let bbox = (xa0.min(xb0), y0, xa1.max(xb1), y1);
        self.paint(
            bbox,
            |x, y| {
                let t = ((y - y0) / (y1 - y0)).clamp(0.0, 1.0);
                let l = xa0 + (xb0 - xa0) * t;
                let r = xa1 + (xb1 - xa1) * t;
                (l - x).max(x - r).max(y0 - y).max(y - y1)
            },
            fill,
        );
    }
}

fn solid(c: [f32; 3]) -> impl Fn(f32, f32) -> [f32; 3] {
    move |_, _| c
}

/// Horizontal stripes of period `p` pixels (garment colour and a contrasting band).
fn stripes(c: [f32; 3], p: f32) -> impl Fn(f32, f32) -> [f32; 3] {
    let lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
    let band = if lum > 150.0 {
        [30.0, 30.0, 36.0]
    } else {
        [238.0, 238.0, 232.0]
    };
    move |_, y| {
        if (y / p).rem_euclid(2.0) < 1.0 {
            c
        } else {
            band
        }
    }
}

/// Render one image of `a`; returns the image and the viewpoint used.
pub fn render(a: &Attributes, rng: &mut Rng) -> (image::RgbImage, View) {
    let h = 300 + rng.below(121);
    let w = ((h as f64) * rng.range(0.34, 0.46)) as usize;
    let mut cv = Canvas {
        w,
        h,
        px: vec![[0.0; 3]; w * h],
    };
    let (wf, hf) = (w as f32, h as f32);

    // Background: wall/sky gradient, ground, clutter.
    let top = rgb([
        (80 + rng.below(150)) as u8,
        (80 + rng.below(150)) as u8,
        (80 + rng.below(150)) as u8,
    ]);
    let ground = rgb([
        (60 + rng.below(110)) as u8,
        (60 + rng.below(100)) as u8,
        (50 + rng.below(90)) as u8,
    ]);
    let horizon = hf * rng.range(0.45, 0.75) as f32;
    for y in 0..h {
        for x in 0..w {
            let t = y as f32 / hf;
            cv.px[y * w + x] = if (y as f32) < horizon {
                shade(top, 1.1 - 0.3 * t)
            } else {
                shade(ground, 0.8 + 0.3 * t)
            };
        }
    }
    for _ in 0..(4 + rng.below(10)) {
        let c = rgb([
            rng.below(256) as u8,
            rng.below(256) as u8,
            rng.below(256) as u8,
        ]);
        let c = shade(c, 0.6);
        let x0 = rng.range(-0.2, 1.0) as f32 * wf;
        let y0 = rng.range(0.0, 0.8) as f32 * hf;
        let (ww, hh) = (
            rng.range(0.05, 0.5) as f32 * wf,
            rng.range(0.03, 0.4) as f32 * hf,
        );
        cv.rect(x0, y0, x0 + ww, y0 + hh, 0.0, solid(c));
    }

    // Figure geometry (fractions of figure height H, feet at `foot`).
    let fig_h = hf * rng.range(0.78, 0.95) as f32;
    let top_y = (hf - fig_h) * rng.range(0.2, 0.8) as f32;
    let cx = wf * (0.5 + rng.range(-0.08, 0.08) as f32);
    let view = match rng.below(5) {
        0 | 1 => View::Front,
        2 | 3 => View::Back,
        _ => View::Side,
    };
    let facing = if rng.chance(0.5) { 1.0f32 } else { -1.0 };
    let y = |f: f32| top_y + f * fig_h;
    let u = fig_h; // unit
    let build = [0.85f32, 1.0, 1.2][a.build];
    let shoulder = 0.125
        * u
        * build
        * if a.woman { 0.9 } else { 1.0 }
        * if view == View::Side { 0.55 } else { 1.0 };
    let hip = 0.095
        * u
        * build
        * if a.woman { 1.05 } else { 1.0 }
        * if view == View::Side { 0.6 } else { 1.0 };
    let stride = rng.range(0.0, 0.07) as f32 * u;
    let swing = rng.range(-0.05, 0.05) as f32 * u;

    let skin = rgb(SKIN[a.skin]);
    let upper = rgb(CLOTHES[a.upper_colour].rgb);
    let lower = rgb(CLOTHES[a.lower_colour].rgb);
    let hair = rgb(HAIR[a.hair_colour].rgb);
    let shoes = rgb(CLOTHES[SHOE_COLOURS[a.shoes]].rgb);
    let bagc = rgb(CLOTHES[BAG_COLOURS[a.bag_colour]].rgb);
    let stripe_p = 0.022 * u;
    let upper_fill = |x: f32, yy: f32| {
        if a.striped {
            stripes(upper, stripe_p)(x, yy)
        } else {
            upper
        }
    };

    // Backpack seen from the side sits behind the body: paint it first.
    let back_dir = -facing;
    if a.bag_type == 1 && view == View::Side {
        cv.rect(
            cx + back_dir * shoulder * 0.6 - 0.06 * u,
            y(0.19),
            cx + back_dir * shoulder * 0.6 + 0.06 * u,
            y(0.42),
            0.02 * u,
            solid(shade(bagc, 0.95)),
        );
    }
    // Long hair behind the shoulders (front view).
    if a.long_hair && view == View::Front {
        cv.rect(
            cx - 0.075 * u,
            y(0.06),
            cx + 0.075 * u,
            y(0.27),
            0.03 * u,
            solid(shade(hair, 0.9)),
        );
    }
    // Hoodie hood on the back.
    if a.upper_type == 3 && view == View::Back {
        cv.ellipse(cx, y(0.17), 0.08 * u, 0.045 * u, solid(shade(upper, 0.85)));
    }

    // Legs.
    let leg_r = 0.036 * u * build;
    let hip_y = y(0.47);
    let ankle_y = y(0.93);
    let (lx, rx) = (cx - hip * 0.5, cx + hip * 0.5);
    let (lfoot, rfoot) = (cx - hip * 0.4 - stride, cx + hip * 0.4 + stride);
    let knee_y = y(0.68);
    let leg_colour_at = |yy: f32| -> [f32; 3] {
        match a.lower_type {
            2 if yy > knee_y => skin,
            3 if yy > y(0.63) => shade(skin, 0.95),
            _ => lower,
        }
    };
    let jeans = a.lower_type == 1;
    for (hx, fx) in [(lx, lfoot), (rx, rfoot)] {
        cv.capsule((hx, hip_y), (fx, ankle_y), leg_r, |xx, yy| {
            let c = leg_colour_at(yy);
            if jeans && yy <= knee_y + 0.3 * u && ((xx * 0.7 + yy * 1.3).sin() > 0.6) {
                shade(c, 0.85)
            } else {
                c
            }
        });
        // Shoes.
        cv.ellipse(
            fx + facing * if view == View::Side { 0.02 * u } else { 0.0 },
            y(0.955),
            0.045 * u,
            0.024 * u,
            solid(shoes),
        );
    }
    // Skirt.
    if a.lower_type == 3 {
        cv.trapezoid(
            y(0.46),
            cx - hip,
            cx + hip,
            y(0.64),
            cx - hip * 1.45,
            cx + hip * 1.45,
            solid(lower),
        );
    }
    // Coat skirt over the thighs.
    if a.upper_type == 4 {
        cv.trapezoid(
            y(0.44),
            cx - hip * 1.05,
            cx + hip * 1.05,
            y(0.66),
            cx - hip * 1.25,
            cx + hip * 1.25,
            upper_fill,
        );
    }

    // Arms (one visible from the side).
    let arm_r = 0.03 * u * build;
    let sleeve_end = if a.upper_type == 0 { y(0.27) } else { y(0.47) };
    let arms: Vec<(f32, f32)> = if view == View::Side {
        vec![(cx + facing * 0.01 * u, cx + facing * 0.01 * u + swing)]
    } else {
        vec![
            (cx - shoulder, cx - shoulder - 0.02 * u + swing),
            (cx + shoulder, cx + shoulder + 0.02 * u - swing),
        ]
    };
    let arm_paint = |cv: &mut Canvas| {
        for &(sx, hx) in &arms {
            cv.capsule((sx, y(0.19)), (hx, y(0.47)), arm_r, |xx, yy| {
                if yy <= sleeve_end {
                    upper_fill(xx, yy)
                } else {
                    skin
                }
            });
            cv.ellipse(hx, y(0.485), arm_r * 1.05, arm_r * 1.2, solid(skin));
        }
    };

    // Torso.
    let torso_bottom = if a.upper_type == 4 { y(0.5) } else { y(0.48) };
    cv.trapezoid(
        y(0.17),
        cx - shoulder,
        cx + shoulder,
        torso_bottom,
        cx - hip * 1.05,
        cx + hip * 1.05,
        upper_fill,
    );
    if view == View::Front {
        match a.upper_type {
            2 | 4 => cv.rect(
                cx - 0.006 * u,
                y(0.19),
                cx + 0.006 * u,
                torso_bottom,
                0.0,
                solid(shade(upper, 0.55)),
            ),
            3 => cv.rect(
                cx - hip * 0.6,
                y(0.36),
                cx + hip * 0.6,
                y(0.44),
                0.01 * u,
                solid(shade(upper, 0.8)),
            ),
            1 => cv.trapezoid(
                y(0.17),
                cx - 0.035 * u,
                cx + 0.035 * u,
                y(0.2),
                cx - 0.01 * u,
                cx + 0.01 * u,
                solid(shade(upper, 0.7)),
            ),
            _ => {}
        }
    }
    if view != View::Side {
        arm_paint(&mut cv);
    }
    // Bags in front of / on the body.
    match (a.bag_type, view) {
        (1, View::Back) => cv.rect(
            cx - shoulder * 0.75,
            y(0.19),
            cx + shoulder * 0.75,
            y(0.43),
            0.025 * u,
            solid(bagc),
        ),
        (1, View::Front) => {
            for s in [-1.0f32, 1.0] {
                cv.capsule(
                    (cx + s * shoulder * 0.6, y(0.175)),
                    (cx + s * shoulder * 0.55, y(0.36)),
                    0.012 * u,
                    solid(bagc),
                );
            }
        }
        (3, v) => {
            let side = if v == View::Side { facing } else { 1.0 };
            if v != View::Side {
                cv.capsule(
                    (cx - shoulder * 0.8, y(0.18)),
                    (cx + side * hip * 1.1, y(0.46)),
                    0.008 * u,
                    solid(shade(bagc, 0.8)),
                );
            }
            let bx = cx + side * hip * 1.1;
            cv.rect(
                bx - 0.055 * u,
                y(0.44),
                bx + 0.055 * u,
                y(0.53),
                0.012 * u,
                solid(bagc),
            );
        }
        _ => {}
    }
    if view == View::Side {
        arm_paint(&mut cv);
    }
    if a.bag_type == 2 {
        let &(_, hx) = arms.last().unwrap();
        cv.capsule(
            (hx - 0.02 * u, y(0.49)),
            (hx + 0.02 * u, y(0.49)),
            0.006 * u,
            solid(shade(bagc, 0.7)),
        );
        cv.trapezoid(
            y(0.5),
            hx - 0.04 * u,
            hx + 0.04 * u,
            y(0.58),
            hx - 0.05 * u,
            hx + 0.05 * u,
            solid(bagc),
        );
    }

    // Neck, head, hair, hat.
    cv.rect(
        cx - 0.02 * u,
        y(0.12),
        cx + 0.02 * u,
        y(0.18),
        0.0,
        solid(shade(skin, 0.9)),
    );
    let (hcx, hcy, hr) = (
        cx + if view == View::Side {
            facing * 0.01 * u
        } else {
            0.0
        },
        y(0.085),
        0.06 * u,
    );
    cv.ellipse(hcx, hcy, hr * 0.9, hr, solid(skin));
    match view {
        View::Back => {
            cv.ellipse(hcx, hcy, hr * 0.95, hr * 1.03, solid(hair));
            if a.long_hair {
                cv.rect(
                    hcx - hr * 0.95,
                    hcy,
                    hcx + hr * 0.95,
                    y(0.26),
                    0.03 * u,
                    solid(hair),
                );
            }
        }
        View::Front => {
            cv.paint(
                (hcx - hr, hcy - hr * 1.1, hcx + hr, hcy),
                |x, yy| {
                    let (dx, dy) = (
                        (x - hcx) / (hr * 0.97),
                        (yy - hcy + 0.25 * hr) / (hr * 0.85),
                    );
                    ((dx * dx + dy * dy).sqrt() - 1.0) * hr * 0.85
                },
                solid(hair),
            );
            if a.long_hair {
                for s in [-1.0f32, 1.0] {
                    cv.rect(
                        hcx + s * hr * 0.95 - hr * 0.22,
                        hcy - hr * 0.3,
                        hcx + s * hr * 0.95 + hr * 0.22,
                        y(0.2),
                        hr * 0.2,
                        solid(hair),
                    );
                }
            }
        }
        View::Side => {
            cv.ellipse(
                hcx - facing * hr * 0.25,
                hcy - hr * 0.15,
                hr * 0.8,
                hr * 0.9,
                solid(hair),
            );
            if a.long_hair {
                cv.rect(
                    hcx - facing * hr * 0.9 - hr * 0.3,
                    hcy,
                    hcx - facing * hr * 0.9 + hr * 0.3,
                    y(0.24),
                    hr * 0.25,
                    solid(hair),
                );
            }
        }
    }
    if a.hat_type > 0 {
        let hc = rgb(CLOTHES[HAT_COLOURS[a.hat_colour]].rgb);
        if a.hat_type == 1 {
            cv.paint(
                (hcx - hr, hcy - hr * 1.15, hcx + hr, hcy - hr * 0.3),
                |x, yy| {
                    let (dx, dy) = ((x - hcx) / hr, (yy - hcy + 0.3 * hr) / (hr * 0.85));
                    ((dx * dx + dy * dy).sqrt() - 1.0).max(yy - hcy + 0.3 * hr) * hr
                },
                solid(hc),
            );
            let bx = if view == View::Side {
                hcx + facing * hr * 0.8
            } else {
                hcx
            };
            let bw = if view == View::Side {
                hr * 0.7
            } else {
                hr * 1.05
            };
            if view != View::Back {
                cv.ellipse(bx, hcy - hr * 0.3, bw, hr * 0.16, solid(shade(hc, 0.8)));
            }
        } else {
            cv.paint(
                (
                    hcx - hr * 1.1,
                    hcy - hr * 1.3,
                    hcx + hr * 1.1,
                    hcy - hr * 0.1,
                ),
                |x, yy| {
                    let (dx, dy) = ((x - hcx) / (hr * 1.05), (yy - hcy + 0.1 * hr) / (hr * 1.15));
                    ((dx * dx + dy * dy).sqrt() - 1.0).max(yy - hcy + 0.1 * hr) * hr
                },
                |_x, yy| {
                    if ((yy - hcy) / (hr * 0.12)).rem_euclid(2.0) < 1.0 && yy > hcy - hr * 0.35 {
                        shade(hc, 0.8)
                    } else {
                        hc
                    }
                },
            );
        }
    }

    // Occlusion (a pole, a bin, a passer-by's bag) in front of the person.
    if rng.chance(0.25) {
        let c = shade(
            rgb([
                rng.below(256) as u8,
                rng.below(256) as u8,
                rng.below(256) as u8,
            ]),
            0.7,
        );
        if rng.chance(0.5) {
            let ow = rng.range(0.06, 0.18) as f32 * wf;
            let ox = rng.range(0.0, 1.0) as f32 * wf - ow / 2.0;
            cv.rect(ox, 0.0, ox + ow, hf, 0.0, solid(c));
        } else {
            let oh = rng.range(0.1, 0.25) as f32 * hf;
            let ow = rng.range(0.4, 1.0) as f32 * wf;
            let ox = rng.range(-0.2, 0.8) as f32 * wf;
            cv.rect(ox, hf - oh, ox + ow, hf, 0.05 * wf, solid(c));
        }
    }

    // Lighting: brightness and colour cast.
    let gain = rng.range(0.7, 1.25) as f32;
    let cast = [
        rng.range(0.92, 1.08) as f32,
        rng.range(0.92, 1.08) as f32,
        rng.range(0.92, 1.08) as f32,
    ];
    for p in cv.px.iter_mut() {
        for i in 0..3 {
            p[i] *= gain * cast[i];
        }
    }
    // Blur (box 3x3, once or twice).
    let blurs = if rng.chance(0.4) { 1 + rng.below(2) } else { 0 };
    for _ in 0..blurs {
        let src = cv.px.clone();
        for yy in 0..h {
            for xx in 0..w {
                let mut acc = [0f32; 3];
                let mut n = 0.0;
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (sx, sy) = (xx as i64 + dx, yy as i64 + dy);
                        if sx >= 0 && sy >= 0 && (sx as usize) < w && (sy as usize) < h {
                            let p = src[sy as usize * w + sx as usize];
                            for i in 0..3 {
                                acc[i] += p[i];
                            }
                            n += 1.0;
                        }
                    }
                }
                cv.px[yy * w + xx] = [acc[0] / n, acc[1] / n, acc[2] / n];
            }
        }
    }
    // Sensor noise.
    let sigma = rng.range(0.0, 7.0);
    let mut img = image::RgbImage::new(w as u32, h as u32);
    for (i, p) in cv.px.iter().enumerate() {
        let mut out = [0u8; 3];
        for c in 0..3 {
            let v = p[c] as f64
                + if sigma > 0.0 {
                    rng.normal() * sigma
                } else {
                    0.0
                };
            out[c] = v.round().clamp(0.0, 255.0) as u8;
        }
        img.put_pixel((i % w) as u32, (i / w) as u32, image::Rgb(out));
    }
    (img, view)
}

/// Render and encode as JPEG (quality 60-95); returns the file bytes and the view.
pub fn render_jpeg(a: &Attributes, rng: &mut Rng) -> (Vec<u8>, View) {
    let (img, view) = render(a, rng);
    let quality = 60 + rng.below(36) as u8;
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    img.write_with_encoder(enc)
        .expect("in-memory JPEG encoding");
    (out, view)
}
