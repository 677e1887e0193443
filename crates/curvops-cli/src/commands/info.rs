//! `curvops info`.

use crate::args::Common;
use crate::common::CliResult;
use crate::obj;
use crate::output::emit;
use curvops::{ActiveSet, Problem};
use curvops_tensor::Float;
use serde_json::json;

pub fn run<T: Float>(c: &Common, p: &Problem<T>, active: &ActiveSet) -> CliResult<()> {
    let order: Vec<_> =
        p.net.layout.entries.iter().map(|e| json!({"name": e.name, "shape": e.shape, "offset": e.offset})).collect();
    let layers: Vec<&str> = p.net.layers.iter().map(|l| l.kind()).collect();
    let mut o = obj! {
        "D" => p.net.num_params(),
        "N" => p.data.n,
        "C" => p.net.out_size(),
        "output_shape" => p.net.output_shape(),
        "param_order" => order,
        "dtype" => T::DTYPE,
        "layers" => layers,
        "loss" => format!("{:?}/{:?}", p.net.loss.kind, p.net.loss.reduction).to_lowercase(),
        "reduction_factor" => p.net.loss.factor(p.data.n, p.net.out_size()),
    };
    if !p.net.is_chain() {
        let nodes: Vec<_> = (0..p.net.layers.len())
            .map(|l| {
                let inputs: Vec<&str> =
                    p.net.inputs_of(l).iter().map(|&v| if v == 0 { "x" } else { p.net.node_name(v - 1) }).collect();
                json!({"name": p.net.node_name(l), "type": p.net.layers[l].kind(), "inputs": inputs, "shape": p.net.layers[l].out_shape()})
            })
            .collect();
        o.insert("nodes".into(), json!(nodes));
    }
    if !active.is_all() {
        let sel: Vec<_> = active
            .names(&p.net.layout)
            .iter()
            .map(|(e, off)| json!({"name": e.name, "shape": e.shape, "offset": off}))
            .collect();
        o.insert("D_active".into(), json!(active.dim));
        o.insert("active_params".into(), json!(sel));
    }
    if !c.json {
        // readable: one line per parameter
        println!(
            "D = {}  N = {}  C = {} {:?}  dtype = {}  loss = {}",
            p.net.num_params(),
            p.data.n,
            p.net.out_size(),
            p.net.output_shape(),
            T::DTYPE,
            o["loss"].as_str().unwrap_or("")
        );
        println!(
            "layers: {}",
            o["layers"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_str().unwrap_or("")).collect::<Vec<_>>().join(" → "))
                .unwrap_or_default()
        );
        for e in &p.net.layout.entries {
            println!("  {:<14} {:<18} offset {}", e.name, format!("{:?}", e.shape), e.offset);
        }
        if !active.is_all() {
            println!("active: {} parameters", active.dim);
        }
        return Ok(());
    }
    emit(true, o);
    Ok(())
}
