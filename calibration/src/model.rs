//! Reading an encoder's ONNX graph, finding what to quantise, and rewriting it.
//!
//! **What gets Q/DQ** (SPEC §9): the inputs of MatMul, Gemm and Conv nodes. A weight
//! (an initializer) becomes an int8 initializer with one scale per output channel
//! and a DequantizeLinear; an activation gets one QuantizeLinear (per tensor) and a
//! DequantizeLinear per consuming node. Everything else — LayerNormalization,
//! Softmax, the GELU's Sigmoid/Mul, residual Adds, biases — stays in float.
//!
//! Each consumer gets its own QuantizeLinear/DequantizeLinear pair (same scale):
//! ONNX Runtime's CPU provider turns `Q -> DQ -> MatMul` into an integer kernel
//! (MatMulIntegerToFloat) only when the pair serves that one node. Measured on the
//! tiny image encoder: with one Q shared by the q/k/v projections those three stayed
//! float MatMuls (13 of 25 integer); with a pair per consumer, each with its own
//! scale and zero-point initializers, all 25 are integer.
//! TensorRT fuses either way.

use crate::CalibrateError;
use prost::Message;
use sen_export::graph::attr_int;
use sen_export::proto::{
    GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto, TypeProto,
    TypeProtoTensor, ValueInfoProto, data_type,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// The op types whose inputs are quantised.
pub const QUANTIZED_OPS: [&str; 3] = ["MatMul", "Gemm", "Conv"];

/// Read an ONNX model, pulling any external data back into the tensors.
pub fn load_model(path: &Path) -> Result<ModelProto, CalibrateError> {
    let bytes = std::fs::read(path).map_err(|e| CalibrateError::io(path, e))?;
    let mut m = ModelProto::decode(bytes.as_slice()).map_err(|e| {
        CalibrateError::Input(format!("{}: not an ONNX model ({e})", path.display()))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let graph = m.graph.as_mut().ok_or_else(|| {
        CalibrateError::Input(format!("{}: the model has no graph", path.display()))
    })?;
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for t in graph
        .initializer
        .iter_mut()
        .filter(|t| t.data_location == 1)
    {
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        let bad = |why: &str| {
            CalibrateError::Input(format!(
                "{}: initializer {}: external data {why}",
                path.display(),
                t.name
            ))
        };
        let loc = get("location").ok_or_else(|| bad("has no location"))?;
        let offset: usize = get("offset").unwrap_or_default().parse().unwrap_or(0);
        let length: Option<usize> = get("length").and_then(|s| s.parse().ok());
        if !files.contains_key(&loc) {
            let p = dir.join(&loc);
            files.insert(
                loc.clone(),
                std::fs::read(&p).map_err(|e| CalibrateError::io(&p, e))?,
            );
        }
        let data = &files[&loc];
        let end = length.map(|l| offset + l).unwrap_or(data.len());
        if end > data.len() {
            return Err(bad(&format!("runs past the end of {loc}")));
        }
        t.raw_data = data[offset..end].to_vec();
        t.data_location = 0;
        t.external_data.clear();
    }
    Ok(m)
}

/// The float32 values of an initializer (raw or `float_data`).
pub fn float_values(t: &TensorProto) -> Result<Vec<f32>, CalibrateError> {
    if t.data_type != data_type::FLOAT {
        return Err(CalibrateError::Input(format!(
            "initializer {} is ONNX type {}, not float32: calibrate the fp32 bundle",
            t.name, t.data_type
        )));
    }
    if !t.float_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        return Err(CalibrateError::Input(format!(
            "initializer {}: {} bytes of raw data is not a whole number of float32s",
            t.name,
            t.raw_data.len()
        )));
    }
    Ok(t.raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// One quantised input of one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// An initializer, quantised per output channel along `axis` (None: per tensor).
    Weight { name: String, axis: Option<usize> },
    /// A tensor computed at run time (or a graph input), quantised per tensor.
    Activation { name: String },
}

/// Which inputs of which nodes get Q/DQ.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Node index -> (input slot, target).
    pub nodes: BTreeMap<usize, Vec<(usize, Target)>>,
    /// Nodes of a quantised op type left in float, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl Plan {
    /// Distinct activation tensors, in graph order.
    pub fn activations(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut out = vec![];
        for targets in self.nodes.values() {
            for (_, t) in targets {
                if let Target::Activation { name } = t
                    && seen.insert(name.clone())
                {
                    out.push(name.clone());
                }
            }
        }
        out
    }

    /// Activation tensor -> the names of the nodes it is quantised for.
    pub fn consumers(&self, g: &GraphProto) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (&i, targets) in &self.nodes {
            for (_, t) in targets {
                if let Target::Activation { name } = t {
                    out.entry(name.clone())
                        .or_default()
                        .push(g.node[i].name.clone());
                }
            }
        }
        out
    }
}

impl Plan {
    /// This plan with the nodes named in `names` left in float (reason `why`).
    pub fn keep_float(&self, g: &GraphProto, names: &BTreeSet<String>, why: &str) -> Plan {
        let mut p = self.clone();
        p.nodes.retain(|&i, _| !names.contains(&g.node[i].name));
        for &i in self.nodes.keys() {
            if names.contains(&g.node[i].name) {
                p.skipped.push((g.node[i].name.clone(), why.to_string()));
            }
        }
        p
    }
}

/// What to leave in float.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Op types not to quantise (of MatMul, Gemm, Conv).
    pub exclude_ops: Vec<String>,
    /// Node names not to quantise; a trailing `*` matches any suffix.
    pub exclude_nodes: Vec<String>,
    /// Also quantise MatMuls of two activations (attention's Q·Kᵀ and P·V).
    pub activation_matmuls: bool,
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Find the inputs to quantise in `g`.
pub fn plan(g: &GraphProto, sel: &Selection) -> Result<Plan, CalibrateError> {
    for op in &sel.exclude_ops {
        if !QUANTIZED_OPS.contains(&op.as_str()) {
            return Err(CalibrateError::Input(format!(
                "--exclude-op {op}: only {} inputs are quantised; nothing else needs excluding",
                QUANTIZED_OPS.join(", ")
            )));
        }
    }
    let inits: HashMap<&str, &TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut plan = Plan::default();
    for (i, n) in g.node.iter().enumerate() {
        if !QUANTIZED_OPS.contains(&n.op_type.as_str()) || !n.domain.is_empty() {
            continue;
        }
        if sel.exclude_ops.contains(&n.op_type) {
            plan.skipped
                .push((n.name.clone(), format!("--exclude-op {}", n.op_type)));
            continue;
        }
        if let Some(p) = sel.exclude_nodes.iter().find(|p| name_matches(p, &n.name)) {
            plan.skipped
                .push((n.name.clone(), format!("--exclude-node {p}")));
            continue;
        }
        // Data inputs: A and B (bias of Gemm/Conv stays float).
        let slots = [0usize, 1];
        let weights = slots
            .iter()
            .filter(|&&s| {
                n.input
                    .get(s)
                    .is_some_and(|x| inits.contains_key(x.as_str()))
            })
            .count();
        if weights == 0 && !sel.activation_matmuls {
            plan.skipped.push((
                n.name.clone(),
                "both inputs are activations (pass --activation-matmuls to quantise them)".into(),
            ));
            continue;
        }
        let mut targets = vec![];
        for s in slots {
            let Some(x) = n.input.get(s).filter(|x| !x.is_empty()) else {
                continue;
            };
            match inits.get(x.as_str()) {
                Some(t) => {
                    if t.data_type != data_type::FLOAT {
                        return Err(CalibrateError::Input(format!(
                            "node {}: weight {x} is ONNX type {}, not float32: calibrate the fp32 bundle",
                            n.name, t.data_type
                        )));
                    }
                    let axis = weight_axis(n, s, t.dims.len());
                    targets.push((
                        s,
                        Target::Weight {
                            name: x.clone(),
                            axis,
                        },
                    ));
                }
                None => targets.push((s, Target::Activation { name: x.clone() })),
            }
        }
        plan.nodes.insert(i, targets);
    }
    Ok(plan)
}

/// The output-channel axis of a weight input, or None for per-tensor.
fn weight_axis(n: &NodeProto, slot: usize, rank: usize) -> Option<usize> {
    let attr = |k: &str| n.attribute.iter().find(|a| a.name == k).map(|a| a.i);
    match (n.op_type.as_str(), slot) {
        // Conv W: [out, in/groups, kh, kw].
        ("Conv", 1) if rank >= 2 => Some(0),
        // MatMul B: [.., in, out].
        ("MatMul", 1) if rank >= 2 => Some(rank - 1),
        // Gemm B: [in, out], or [out, in] with transB.
        ("Gemm", 1) if rank == 2 => Some(if attr("transB") == Some(1) { 0 } else { 1 }),
        _ => None,
    }
}

/// A float graph output of unknown shape (for collecting a tensor's values).
fn float_output(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: data_type::FLOAT,
                shape: None,
            }),
        }),
        ..Default::default()
    }
}

/// The model with every activation of `plan` that is not a graph input added as an
/// output (what the collection pass reads). Returns the model bytes.
pub fn augmented(model: &ModelProto, plan: &Plan) -> Vec<u8> {
    let mut m = model.clone();
    let g = m.graph.as_mut().expect("checked at load");
    let inputs: BTreeSet<&str> = model
        .graph
        .as_ref()
        .expect("graph")
        .input
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    let existing: BTreeSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    for a in plan.activations() {
        if !inputs.contains(a.as_str()) && !existing.contains(&a) {
            g.output.push(float_output(&a));
        }
    }
    m.encode_to_vec()
}

/// Symmetric per-channel int8 quantisation of a weight to [-qmax, qmax] (127 for 8
/// bits, 63 for 7): (int8 values, scales). `axis` None: one scale for the whole tensor.
pub fn quantize_weight(
    values: &[f32],
    dims: &[i64],
    axis: Option<usize>,
    qmax: i32,
) -> (Vec<i8>, Vec<f32>) {
    let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    let (channels, inner) = match axis {
        Some(a) => (dims[a], dims[a + 1..].iter().product::<usize>()),
        None => (1, values.len()),
    };
    let channel_of = |i: usize| (i / inner) % channels;
    let mut amax = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = channel_of(i);
        amax[c] = amax[c].max(v.abs());
    }
    let scales: Vec<f32> = amax
        .iter()
        .map(|&a| if a > 0.0 { a / qmax as f32 } else { 1.0 })
        .collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, &v)| quantize_to(v, scales[channel_of(i)], qmax))
        .collect();
    (q, scales)
}

/// [`quantize`] into [-qmax, qmax].
pub fn quantize_to(v: f32, scale: f32, qmax: i32) -> i8 {
    (v / scale)
        .round_ties_even()
        .clamp(-qmax as f32, qmax as f32) as i8
}

/// ONNX QuantizeLinear for symmetric int8 (zero point 0): round half to even, saturate
/// to [-127, 127] (the symmetric range TensorRT uses).
pub fn quantize(v: f32, scale: f32) -> i8 {
    (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8
}

fn tensor_i8(name: &str, dims: &[i64], data: &[i8]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: data_type::INT8,
        name: name.into(),
        raw_data: data.iter().map(|&v| v as u8).collect(),
        ..Default::default()
    }
}

fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    sen_export::graph::float_tensor(name, dims, data, sen_export::graph::Compute::F32)
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str, axis: Option<usize>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: name.into(),
        op_type: op.into(),
        attribute: axis
            .map(|a| vec![attr_int("axis", a as i64)])
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// Rewrite `model` with Q/DQ pairs for `plan`, activation scales from `scales`
/// (tensor name -> scale). `metadata` goes into the model's metadata_props.
/// Weights are quantised to [-`weight_qmax`, `weight_qmax`].
pub fn quantize_model(
    model: &ModelProto,
    plan: &Plan,
    scales: &BTreeMap<String, f32>,
    metadata: &[(String, String)],
    weight_qmax: i32,
) -> Result<ModelProto, CalibrateError> {
    let mut m = model.clone();
    let g = m.graph.as_mut().expect("checked at load");
    let old_nodes = std::mem::take(&mut g.node);
    let init_index: HashMap<String, usize> = g
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut new_inits: Vec<TensorProto> = vec![];
    let mut quantized_weights: BTreeMap<String, String> = BTreeMap::new();
    let mut quantized_acts: BTreeSet<String> = BTreeSet::new();
    let mut float_uses: BTreeSet<String> = BTreeSet::new();
    let zp_scalar = |name: &str| tensor_i8(name, &[], &[0]);
    let mut nodes = Vec::with_capacity(old_nodes.len() * 2);
    for (i, mut n) in old_nodes.into_iter().enumerate() {
        let targets = plan.nodes.get(&i).cloned().unwrap_or_default();
        for (slot, t) in &targets {
            match t {
                Target::Activation { name } => {
                    // Scale and zero point per consumer too: with shared ones ONNX
                    // Runtime's common-subexpression pass merges the Q nodes again.
                    let (s, z) = (
                        format!("{name}_scale_for_{}", n.name),
                        format!("{name}_zero_point_for_{}", n.name),
                    );
                    quantized_acts.insert(name.clone());
                    let scale = *scales.get(name).ok_or_else(|| {
                        CalibrateError::Input(format!("no calibration range for tensor {name}"))
                    })?;
                    new_inits.push(tensor_f32(&s, &[], &[scale]));
                    new_inits.push(zp_scalar(&z));
                    let q = format!("{name}_quantized_for_{}", n.name);
                    nodes.push(node(
                        "QuantizeLinear",
                        &format!("{}/QuantizeLinear_{slot}", n.name),
                        &[name, &s, &z],
                        &q,
                        None,
                    ));
                    let dq = format!("{name}_dequantized_for_{}", n.name);
                    nodes.push(node(
                        "DequantizeLinear",
                        &format!("{}/DequantizeLinear_{slot}", n.name),
                        &[&q, &s, &z],
                        &dq,
                        None,
                    ));
                    n.input[*slot] = dq;
                }
                Target::Weight { name, axis } => {
                    let qname = format!("{name}_quantized");
                    let (s, z) = (format!("{name}_scale"), format!("{name}_zero_point"));
                    if !quantized_weights.contains_key(name) {
                        let t = &g.initializer[init_index[name]];
                        let values = float_values(t)?;
                        let (q, sc) = quantize_weight(&values, &t.dims, *axis, weight_qmax);
                        let sdims: Vec<i64> = if axis.is_some() {
                            vec![sc.len() as i64]
                        } else {
                            vec![]
                        };
                        new_inits.push(tensor_i8(&qname, &t.dims, &q));
                        new_inits.push(tensor_f32(&s, &sdims, &sc));
                        new_inits.push(tensor_i8(&z, &sdims, &vec![0; sc.len()]));
                        quantized_weights.insert(name.clone(), qname.clone());
                    }
                    let dq = format!("{name}_dequantized_for_{}", n.name);
                    nodes.push(node(
                        "DequantizeLinear",
                        &format!("{}/DequantizeLinear_{slot}", n.name),
                        &[&qname, &s, &z],
                        &dq,
                        *axis,
                    ));
                    n.input[*slot] = dq;
                }
            }
        }
        for x in &n.input {
            float_uses.insert(x.clone());
        }
        nodes.push(n);
    }
    g.node = nodes;
    // Drop float weights no node reads any more.
    g.initializer
        .retain(|t| !quantized_weights.contains_key(&t.name) || float_uses.contains(&t.name));
    g.initializer.extend(new_inits);
    m.producer_name = "sen-calibrate".into();
    m.producer_version = env!("CARGO_PKG_VERSION").into();
    m.metadata_props
        .extend(metadata.iter().map(|(k, v)| StringStringEntryProto {
            key: k.clone(),
            value: v.clone(),
        }));
    Ok(m)
}

/// Count of nodes by op type (for reports and tests).
pub fn op_counts(g: &GraphProto) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for n in &g.node {
        *c.entry(n.op_type.clone()).or_default() += 1;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_weights_use_each_columns_own_scale() {
        // [in=2, out=3] MatMul weight: channel = column (axis 1).
        let w = [1.0, -0.5, 0.0, 0.25, 2.0, 0.0];
        let (q, s) = quantize_weight(&w, &[2, 3], Some(1), 127);
        assert_eq!(s, vec![1.0 / 127.0, 2.0 / 127.0, 1.0]);
        assert_eq!(q, vec![127, -32, 0, 32, 127, 0]);
        // Conv [out=2, in=1, 1, 2]: channel = axis 0.
        let (q, s) = quantize_weight(&[0.5, -1.0, 3.0, 1.5], &[2, 1, 1, 2], Some(0), 127);
        assert_eq!(s, vec![1.0 / 127.0, 3.0 / 127.0]);
        assert_eq!(q, vec![64, -127, 127, 64]);
        // Per tensor.
        let (q, s) = quantize_weight(&[0.5, -1.0], &[2], None, 127);
        assert_eq!((q, s), (vec![64, -127], vec![1.0 / 127.0]));
        // 7 bits (reduce_range): the same shapes into [-63, 63].
        let (q, s) = quantize_weight(&w, &[2, 3], Some(1), 63);
        assert_eq!(s, vec![1.0 / 63.0, 2.0 / 63.0, 1.0]);
        assert_eq!(q, vec![63, -16, 0, 16, 63, 0]);
        assert_eq!(quantize_to(1000.0, 1.0, 63), 63);
        assert_eq!(quantize_to(-1000.0, 1.0, 63), -63);
    }

    #[test]
    fn quantize_rounds_half_to_even_and_saturates() {
        assert_eq!(quantize(2.5, 1.0), 2);
        assert_eq!(quantize(3.5, 1.0), 4);
        assert_eq!(quantize(-2.5, 1.0), -2);
        assert_eq!(quantize(1000.0, 1.0), 127);
        assert_eq!(quantize(-1000.0, 1.0), -127);
    }

    #[test]
    fn node_patterns() {
        assert!(name_matches("visual.proj/*", "visual.proj/MatMul_3"));
        assert!(!name_matches("visual.proj/*", "visual.projx"));
        assert!(name_matches("a", "a") && !name_matches("a", "ab"));
    }
}
