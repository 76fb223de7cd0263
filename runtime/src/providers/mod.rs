//! Execution providers: TensorRT (FP16/INT8 engines), CUDA and CPU, through ONNX Runtime.
//!
//! Before ONNX Runtime is asked for a GPU provider, [`preflight`] checks for
//! everything that provider loads (the provider library of the ONNX Runtime build,
//! the NVIDIA driver, the CUDA 13 runtime, cuBLAS, cuDNN, TensorRT 10) and reports
//! every missing piece with how to install it, in milliseconds, instead of an
//! opaque failure from inside ONNX Runtime. The provider is then registered with
//! `error_on_failure`, and CPU fallback is disabled unless `--allow-fallback`.
//!
//! TensorRT engines are cached on disk under a directory keyed by the encoder's
//! content hash, the TensorRT version, the GPU model and compute capability, the
//! precision and the batch profile ([`engine_cache_dir`]): two checkpoints with
//! the same graph never share an engine (SPEC §9).
//!
//! [`options`]: what the user chose; [`preflight`]: what the machine has;
//! [`tensorrt`]: engines, caches and profiles.

pub mod options;
pub mod preflight;
pub mod tensorrt;

pub use options::*;
pub use preflight::*;
pub use tensorrt::*;

#[cfg(test)]
mod tests {
    use super::*;
    use sen_core::Manifest;
    use sen_core::manifest::Precision;
    use std::path::{Path, PathBuf};

    fn gpu() -> GpuInfo {
        GpuInfo {
            name: "NVIDIA Jetson AGX Orin".into(),
            compute_capability: (8, 7),
            memory_bytes: 32 << 30,
            driver_cuda_version: 13000,
        }
    }

    #[test]
    fn provider_names_parse() {
        for k in ProviderKind::ALL {
            assert_eq!(k.name().parse::<ProviderKind>().unwrap(), k);
        }
        assert_eq!(
            "TRT".parse::<ProviderKind>().unwrap(),
            ProviderKind::TensorRt
        );
        assert!(
            "rocm"
                .parse::<ProviderKind>()
                .unwrap_err()
                .contains("tensorrt, cuda or cpu")
        );
    }

    #[test]
    fn batch_profiles_parse_and_validate() {
        assert_eq!(
            "1,16,64".parse::<BatchProfile>().unwrap(),
            BatchProfile {
                min: 1,
                opt: 16,
                max: 64
            }
        );
        assert!("8,4,16".parse::<BatchProfile>().is_err());
        assert!("0,1,1".parse::<BatchProfile>().is_err());
        assert!("1,2".parse::<BatchProfile>().is_err());
        assert!("a,b,c".parse::<BatchProfile>().is_err());
        BatchProfile::IMAGE_DEFAULT.validate().unwrap();
        BatchProfile::TEXT_DEFAULT.validate().unwrap();
    }

    #[test]
    fn profile_shapes_vary_only_the_batch() {
        use sen_core::manifest::{Dim, TensorSpec};
        let d = tempfile::tempdir().unwrap();
        let mut m = Manifest::example(d.path());
        m.io.image.inputs = vec![TensorSpec {
            name: "pixel_values".into(),
            dtype: "float32".into(),
            shape: vec![
                Dim::Symbolic("batch".into()),
                Dim::Fixed(3),
                Dim::Fixed(192),
                Dim::Fixed(64),
            ],
        }];
        m.io.text.inputs = vec![
            TensorSpec {
                name: "input_ids".into(),
                dtype: "int64".into(),
                shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(77)],
            },
            TensorSpec {
                name: "eot_index".into(),
                dtype: "int64".into(),
                shape: vec![Dim::Symbolic("batch".into())],
            },
        ];
        let p = BatchProfile {
            min: 1,
            opt: 16,
            max: 64,
        };
        let s = profile_shapes(&m.io.image, &p, None).unwrap();
        assert_eq!(
            s,
            [
                "pixel_values:1x3x192x64".to_string(),
                "pixel_values:16x3x192x64".into(),
                "pixel_values:64x3x192x64".into()
            ]
        );
        let s = profile_shapes(&m.io.text, &p, None).unwrap();
        assert_eq!(s[1], "input_ids:16x77,eot_index:16");
        // A format-2 text encoder: the sequence axis follows its own profile.
        m.io.text.inputs[0].shape[1] = Dim::Symbolic("sequence".into());
        let seq = BatchProfile {
            min: 1,
            opt: 20,
            max: 77,
        };
        let s = profile_shapes(&m.io.text, &p, Some(&seq)).unwrap();
        assert_eq!(
            s,
            [
                "input_ids:1x1,eot_index:1".to_string(),
                "input_ids:16x20,eot_index:16".into(),
                "input_ids:64x77,eot_index:64".into()
            ]
        );
        assert!(profile_shapes(&m.io.text, &p, None).is_err());
        m.io.text.inputs[1].shape = vec![Dim::Symbolic("seq".into())];
        assert!(profile_shapes(&m.io.text, &p, Some(&seq)).is_err());
    }

    #[test]
    fn engine_cache_key_separates_everything_that_changes_an_engine() {
        let root = Path::new("/c");
        let p = BatchProfile::IMAGE_DEFAULT;
        let base = engine_cache_dir(
            root,
            &"a".repeat(64),
            (10, 3, 0),
            &gpu(),
            EnginePrecision::Fp16,
            &p,
            None,
            true,
        );
        assert_eq!(
            base,
            Path::new(
                "/c/engines/aaaaaaaaaaaaaaaa-trt10.3.0-nvidia-jetson-agx-orin-sm87-fp16-lnfp32-b1-16-64"
            )
        );
        let mut other_gpu = gpu();
        other_gpu.compute_capability = (8, 6);
        let variants = [
            engine_cache_dir(
                root,
                &"b".repeat(64),
                (10, 3, 0),
                &gpu(),
                EnginePrecision::Fp16,
                &p,
                None,
                true,
            ),
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 4, 0),
                &gpu(),
                EnginePrecision::Fp16,
                &p,
                None,
                true,
            ),
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 3, 0),
                &other_gpu,
                EnginePrecision::Fp16,
                &p,
                None,
                true,
            ),
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 3, 0),
                &gpu(),
                EnginePrecision::Int8,
                &p,
                None,
                true,
            ),
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 3, 0),
                &gpu(),
                EnginePrecision::Fp16,
                &p,
                None,
                false,
            ),
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 3, 0),
                &gpu(),
                EnginePrecision::Fp16,
                &BatchProfile {
                    min: 1,
                    opt: 8,
                    max: 64,
                },
                None,
                true,
            ),
        ];
        for v in &variants {
            assert_ne!(v, &base);
        }
        // The text profile's sequence range is part of the key.
        let seq = |opt| {
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 3, 0),
                &gpu(),
                EnginePrecision::Fp16,
                &p,
                Some(&BatchProfile {
                    min: 1,
                    opt,
                    max: 77,
                }),
                true,
            )
        };
        assert!(seq(20).to_string_lossy().ends_with("-b1-16-64-s1-20-77"));
        assert_ne!(seq(20), seq(32));
        assert_ne!(seq(20), base);
        assert_eq!(
            timing_cache_dir(root, (10, 3, 0), &gpu()),
            Path::new("/c/timing/trt10.3.0-nvidia-jetson-agx-orin-sm87")
        );
    }

    #[test]
    fn two_checkpoints_with_one_graph_get_two_engine_dirs() {
        // Same graph, different weights: the .onnx hashes differ, so do the dirs;
        // with external data only the .data differs, and the digest still does.
        let d = tempfile::tempdir().unwrap();
        let mut a = Manifest::example(d.path());
        let mut b = a.clone();
        let f = a.io.image.file.clone();
        let data = format!("{f}.data");
        for (m, w) in [(&mut a, "1"), (&mut b, "2")] {
            m.files.insert(
                data.clone(),
                sen_core::manifest::FileEntry {
                    sha256: w.repeat(64),
                    bytes: 4,
                },
            );
        }
        let opts = TensorRtOptions {
            cache_root: PathBuf::from("/c"),
            ..Default::default()
        };
        let plan = |m: &Manifest| {
            TensorRtPlan::new(
                m,
                &m.io.image,
                &BatchProfile::IMAGE_DEFAULT,
                &opts,
                (10, 3, 0),
                &gpu(),
                0,
            )
            .unwrap()
        };
        assert_ne!(plan(&a).engine_dir, plan(&b).engine_dir);
        assert_eq!(plan(&a).engine_dir, plan(&a.clone()).engine_dir);
    }

    #[test]
    fn implicit_int8_builds_the_fp32_model_with_its_calibration_cache() {
        let d = tempfile::tempdir().unwrap();
        let mut m = Manifest::example(d.path());
        m.precision = Precision::Int8;
        let f = m.io.image.file.clone();
        let cache = format!("{IMPLICIT_DIR}/{}", calibration_cache_name(&f));
        assert_eq!(cache, "implicit/image_encoder.calib");
        let entry = |w: &str| sen_core::manifest::FileEntry {
            sha256: w.repeat(64),
            bytes: 4,
        };
        m.files.insert(format!("{IMPLICIT_DIR}/{f}"), entry("a"));
        m.files.insert(cache.clone(), entry("b"));
        let mut opts = ProviderOptions::new(ProviderKind::TensorRt);
        opts.tensorrt.cache_root = PathBuf::from("/c");
        let plan = |m: &Manifest, o: &ProviderOptions| {
            TensorRtPlan::new(
                m,
                &m.io.image,
                &BatchProfile::IMAGE_DEFAULT,
                &o.tensorrt,
                (10, 3, 0),
                &gpu(),
                0,
            )
        };
        let qdq = plan(&m, &opts).unwrap();
        assert_eq!(qdq.precision, EnginePrecision::Int8);
        assert_eq!(qdq.model_file, f);
        assert_eq!(qdq.calibration_table, None);
        assert_eq!(model_file(&m, &m.io.image, &opts).unwrap(), f);

        opts.tensorrt.int8_implicit = true;
        let imp = plan(&m, &opts).unwrap();
        assert_eq!(imp.precision, EnginePrecision::Int8Implicit);
        assert_eq!(imp.model_file, "implicit/image_encoder.onnx");
        assert_eq!(model_file(&m, &m.io.image, &opts).unwrap(), imp.model_file);
        assert_eq!(
            imp.calibration_table.as_deref(),
            Some("image_encoder.calib")
        );
        assert_ne!(imp.engine_dir, qdq.engine_dir);
        assert!(imp.engine_dir.to_string_lossy().contains("-int8implicit-"));
        // New ranges, same weights: another engine.
        let mut m2 = m.clone();
        m2.files.insert(cache.clone(), entry("c"));
        assert_ne!(plan(&m2, &opts).unwrap().engine_dir, imp.engine_dir);

        // The cache lands in the engine directory, where ONNX Runtime reads it.
        let bundle = tempfile::tempdir().unwrap();
        let model = bundle.path().join("implicit").join("image_encoder.onnx");
        std::fs::create_dir_all(model.parent().unwrap()).unwrap();
        std::fs::write(
            model.with_file_name("image_encoder.calib"),
            "TRT-100300-x\n",
        )
        .unwrap();
        let mut imp = imp;
        imp.engine_dir = bundle.path().join("engine");
        std::fs::create_dir_all(&imp.engine_dir).unwrap();
        imp.install_calibration_table(&model).unwrap();
        assert!(imp.engine_dir.join("image_encoder.calib").is_file());

        // Refused: implicit on another provider, without the implicit files, on a non-int8 bundle.
        let mut cpu = ProviderOptions::cpu();
        cpu.tensorrt.int8_implicit = true;
        assert!(model_file(&m, &m.io.image, &cpu).is_err());
        let mut bare = m.clone();
        bare.files.remove(&cache);
        let e = model_file(&bare, &bare.io.image, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no implicit/image_encoder.calib"), "{e}");
        m.precision = Precision::Fp32;
        assert!(model_file(&m, &m.io.image, &opts).is_err());
    }

    #[test]
    fn precision_comes_from_the_bundle() {
        use EnginePrecision as E;
        assert_eq!(
            E::for_bundle(Precision::Fp32, false, false, Some(10)).unwrap(),
            E::Fp32
        );
        assert_eq!(
            E::for_bundle(Precision::Fp32, true, false, Some(10)).unwrap(),
            E::Fp16
        );
        assert!(E::for_bundle(Precision::Fp32, true, false, Some(11)).is_err());
        assert_eq!(
            E::for_bundle(Precision::Fp16, false, false, Some(11)).unwrap(),
            E::Fp16
        );
        assert_eq!(
            E::for_bundle(Precision::Int8, false, false, Some(10)).unwrap(),
            E::Int8
        );
        assert_eq!(
            E::for_bundle(Precision::Int8, false, true, Some(10)).unwrap(),
            E::Int8Implicit
        );
        let e = E::for_bundle(Precision::Int8, false, true, Some(11)).unwrap_err();
        assert!(e.to_string().contains("removed implicit"), "{e}");
        let e = E::for_bundle(Precision::Fp32, false, true, Some(10)).unwrap_err();
        assert!(e.to_string().contains("needs an int8 bundle"), "{e}");
    }

    #[test]
    fn tensorrt_versions_decode() {
        assert_eq!(decode_tensorrt_version(100300), (10, 3, 0));
        assert_eq!(decode_tensorrt_version(101302), (10, 13, 2));
        assert_eq!(decode_tensorrt_version(8601), (8, 6, 1));
        assert_eq!(decode_tensorrt_version(110000), (11, 0, 0));
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("NVIDIA GeForce RTX 4090"), "nvidia-geforce-rtx-4090");
        assert_eq!(slug("  A100-SXM4 (80GB) "), "a100-sxm4-80gb");
    }

    /// A shared library at `dir/file` with soname `soname`, linking `links` (so they
    /// become its DT_NEEDED entries), built by the C compiler.
    fn stub_library(dir: &Path, file: &str, soname: &str, links: &[&str]) {
        let src = dir.join("stub.c");
        std::fs::write(&src, "int sen_stub(void) { return 1; }\n").unwrap();
        let out = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .arg("-shared")
            .arg("-fPIC")
            .arg("-o")
            .arg(dir.join(file))
            .arg(&src)
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-Wl,--no-as-needed")
            .args(links.iter().map(|l| dir.join(l)))
            .output()
            .expect("a C compiler (cc) builds the stub libraries; the README lists it");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn what_to_check_comes_from_the_provider_librarys_own_dependencies() {
        // A TensorRT provider library of the JetPack 6 / JetPack 5 kind: CUDA 12's
        // runtime, cuDNN 8, TensorRT 8 (none of which this machine has on its path).
        let d = tempfile::tempdir().unwrap();
        for so in ["libcudart.so.12", "libcudnn.so.8", "libnvinfer.so.8"] {
            stub_library(d.path(), so, so, &[]);
        }
        stub_library(
            d.path(),
            "libonnxruntime_providers_tensorrt.so",
            "libonnxruntime_providers_tensorrt.so",
            &["libcudart.so.12", "libcudnn.so.8", "libnvinfer.so.8"],
        );
        let needed = elf_needed(&d.path().join("libonnxruntime_providers_tensorrt.so")).unwrap();
        for so in ["libcudart.so.12", "libcudnn.so.8", "libnvinfer.so.8"] {
            assert!(needed.iter().any(|n| n == so), "{needed:?}");
        }
        let p = preflight(
            ProviderKind::TensorRt,
            &d.path().join("libonnxruntime.so.1.20.1"),
            0,
        );
        let all = p.missing.join("\n");
        assert!(
            all.contains("libcudart.so.12") && all.contains("CUDA 12"),
            "{all}"
        );
        assert!(
            all.contains("libnvinfer.so.8") && all.contains("TensorRT 8"),
            "{all}"
        );
        assert!(
            all.contains("libcudnn.so.8") && all.contains("cuDNN 8"),
            "{all}"
        );
        assert!(
            !all.contains(".so.13"),
            "nothing of CUDA 13 is asked for: {all}"
        );
        // Not an ELF file: a clear error naming it.
        std::fs::write(
            d.path().join("libonnxruntime_providers_cuda.so"),
            b"not elf",
        )
        .unwrap();
        let p = preflight(ProviderKind::Cuda, &d.path().join("libonnxruntime.so"), 0);
        assert!(
            p.missing
                .iter()
                .any(|m| m.contains("libonnxruntime_providers_cuda.so")
                    && m.contains("not a 64-bit ELF")),
            "{:?}",
            p.missing
        );
        assert!(how_to_get("libcublasLt.so.11").contains("cuBLAS 11"));
        // A CUDA 11 build of the CUDA provider (JetPack 5): cuDNN 8, from its runtime.
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            provider_requirements(
                ProviderKind::Cuda,
                &v(&["libcublas.so.11", "libcudart.so.11.0", "libc.so.6"])
            ),
            v(&["libcublas.so.11", "libcudart.so.11.0", "libcudnn.so.8"])
        );
        assert_eq!(
            provider_requirements(ProviderKind::Cuda, &v(&["libcudart.so.12"])),
            v(&["libcudart.so.12", "libcudnn.so.9"])
        );
    }

    #[test]
    fn the_cuda_13_provider_library_names_cuda_13() {
        // The onnxruntime-gpu 1.31.1 build `make deps-ort-gpu` fetches (skipped when
        // that optional set is not in the cache).
        let dir = sen_core::deps::cache_dir().join("onnxruntime-gpu/lib");
        let cuda = dir.join("libonnxruntime_providers_cuda.so");
        if !cuda.is_file() {
            println!(
                "SKIPPED: {} is absent (make deps-ort-gpu fetches it)",
                cuda.display()
            );
            return;
        }
        let needed = elf_needed(&cuda).unwrap();
        for so in ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13"] {
            assert!(needed.iter().any(|n| n == so), "{needed:?}");
        }
        // cuDNN is not linked but opened at run time: it is checked all the same.
        assert!(
            !needed.iter().any(|n| n.starts_with("libcudnn")),
            "{needed:?}"
        );
        let check = provider_requirements(ProviderKind::Cuda, &needed);
        assert!(check.iter().any(|n| n == "libcudnn.so.9"), "{check:?}");
        assert!(!check.iter().any(|n| n.starts_with("libc.so")), "{check:?}");
        // The preflight names every one of them the loader cannot find.
        let p = preflight(ProviderKind::Cuda, &dir.join("libonnxruntime.so.1.31.1"), 0);
        let all = p.missing.join("\n");
        for name in &check {
            // SAFETY: loading a library runs its initialisers, as the preflight does.
            let loads = unsafe { libloading::Library::new(name) }.is_ok();
            assert!(
                loads || all.contains(name.as_str()),
                "{name} not named: {all}"
            );
        }
        let trt = elf_needed(&dir.join("libonnxruntime_providers_tensorrt.so")).unwrap();
        assert!(
            trt.iter().any(|n| n.starts_with("libnvinfer.so.10")),
            "{trt:?}"
        );
    }

    #[test]
    fn gpu_providers_fail_fast_here_naming_what_is_missing() {
        // This machine has the CPU-only ONNX Runtime and no NVIDIA driver. (On a GPU box
        // with the GPU build these lists are empty and the test checks nothing more.)
        let lib = crate::onnxruntime::init().unwrap_or_else(|e| panic!("{e}"));
        for kind in [ProviderKind::Cuda, ProviderKind::TensorRt] {
            let t = std::time::Instant::now();
            let p = preflight(kind, &lib.path, 0);
            assert!(
                t.elapsed().as_secs() < 5,
                "preflight took {:?}",
                t.elapsed()
            );
            if p.ok() {
                continue;
            }
            let e = p.into_result().unwrap_err().to_string();
            assert!(
                e.contains(&format!("the {kind} provider cannot start")),
                "{e}"
            );
            let has_lib = !lib
                .path
                .parent()
                .unwrap()
                .join(kind.ort_library().unwrap())
                .exists();
            if has_lib {
                assert!(
                    e.contains(kind.ort_library().unwrap()) && e.contains("--ort-lib"),
                    "{e}"
                );
            }
        }
        assert!(preflight(ProviderKind::Cpu, &lib.path, 0).ok());
    }
}
