//! The pickle of a `torch.save` file (`sen-train import`): any bytes parse to an
//! object graph or an error with its position, never a panic or a hang; a tensor in a
//! graph always lies inside its storage.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sen_core::torch_pickle::{Obj, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = parse(data) else {
        return;
    };
    let mut todo = vec![p.root()];
    let mut seen = std::collections::HashSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        match p.get(id) {
            Obj::Tensor(t) => assert!(t.fits_storage(), "{t:?}"),
            Obj::Tuple(v) | Obj::List(v) => todo.extend(v),
            Obj::Dict(kv) => todo.extend(kv.iter().flat_map(|(k, v)| [*k, *v])),
            _ => {}
        }
        let _ = p.kind(id);
    }
});
