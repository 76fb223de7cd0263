//! A small ONNX graph builder: named nodes, initializers in the compute precision,
//! and the few attribute kinds the encoders need.

use crate::proto::{
    AttributeProto, DimValue, Dimension, GraphProto, NodeProto, TensorProto, TensorShapeProto,
    TypeProto, TypeProtoTensor, ValueInfoProto, attribute_type, data_type,
};
use half::f16;

/// Element type of weights and activations inside the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compute {
    F32,
    F16,
}

impl Compute {
    pub fn onnx_type(self) -> i32 {
        match self {
            Compute::F32 => data_type::FLOAT,
            Compute::F16 => data_type::FLOAT16,
        }
    }
}

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: attribute_type::INT,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: attribute_type::INTS,
        ..Default::default()
    }
}

pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: attribute_type::FLOAT,
        ..Default::default()
    }
}

/// A float tensor stored in `kind` (raw little-endian data).
pub fn float_tensor(name: &str, dims: &[i64], data: &[f32], kind: Compute) -> TensorProto {
    let raw: Vec<u8> = match kind {
        Compute::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Compute::F16 => data
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
    };
    TensorProto {
        dims: dims.to_vec(),
        data_type: kind.onnx_type(),
        name: name.into(),
        raw_data: raw,
        ..Default::default()
    }
}

pub fn i64_tensor(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: data_type::INT64,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// `name: elem_type[dims]`, a dim being a size or a symbolic name.
pub fn value_info(name: &str, elem_type: i32, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Ok(v) => DimValue::DimValue(*v),
                                Err(p) => DimValue::DimParam(p.to_string()),
                            }),
                        })
                        .collect(),
                }),
            }),
        }),
        ..Default::default()
    }
}

pub struct Builder {
    pub compute: Compute,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    count: usize,
}

impl Builder {
    pub fn new(compute: Compute) -> Self {
        Builder {
            compute,
            nodes: Vec::new(),
            initializers: Vec::new(),
            count: 0,
        }
    }

    /// Add `op` reading `inputs`; returns its single output's name (`hint` + a counter).
    pub fn op(
        &mut self,
        op: &str,
        hint: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.count += 1;
        let out = format!("{hint}/{op}_{}", self.count);
        self.op_named(op, &out, inputs, attrs);
        out
    }

    /// Like [`Builder::op`], writing to a chosen output name (graph outputs).
    pub fn op_named(&mut self, op: &str, out: &str, inputs: &[&str], attrs: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: out.to_string(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// A weight in the compute precision.
    pub fn weight(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len(), "{name}");
        self.initializers
            .push(float_tensor(name, dims, data, self.compute));
        name.to_string()
    }

    /// A weight kept in float32 whatever the compute precision.
    pub fn weight_f32(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        self.initializers
            .push(float_tensor(name, dims, data, Compute::F32));
        name.to_string()
    }

    pub fn const_i64(&mut self, name: &str, dims: &[i64], data: &[i64]) -> String {
        self.initializers.push(i64_tensor(name, dims, data));
        name.to_string()
    }

    /// Cast `x` to ONNX element type `to` unless it already has it (`from`).
    pub fn cast(&mut self, x: &str, from: i32, to: i32) -> String {
        if from == to {
            x.to_string()
        } else {
            self.op("Cast", x, &[x], vec![attr_int("to", to as i64)])
        }
    }

    pub fn finish(
        self,
        name: &str,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
    ) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: name.into(),
            initializer: self.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }
    }
}
