//! State dicts: PyTorch's names, shapes and dtypes in the files we write (judged by the reference
//! `safetensors` crate), loading rules (strict, dtype conversion, errors naming the key, nothing
//! changed by a failed load), and round trips of trained models.

use batchnorm::{BatchNorm as CoreBn, BatchNormConfig};
use batchnorm_nn::layers::{BatchNorm, Layer, Linear, Mode, Param, Sigmoid};
use batchnorm_nn::safetensors::{Dtype, Tensor};
use batchnorm_nn::state_dict::{load_batch_norm, LoadReport, StateDict, StateDictError};
use batchnorm_nn::{NnError, Rng, Sequential, Sgd, SgdConfig, SoftmaxCrossEntropy};

/// The `bnlab fig1` network shape at a small size: Linear, BatchNorm, Sigmoid, ..., Linear.
fn bn_mlp<T: batchnorm_nn::Scalar>(rng: &mut Rng) -> Sequential<T> {
    let layers: Vec<Box<dyn Layer<T>>> = vec![
        Box::new(Linear::gaussian(6, 5, 0.5, rng).unwrap()),
        Box::new(BatchNorm::new(&[5], BatchNormConfig::default()).unwrap()),
        Box::new(Sigmoid::new(5).unwrap()),
        Box::new(Linear::gaussian(5, 4, 0.5, rng).unwrap()),
        Box::new(BatchNorm::new(&[4], BatchNormConfig::default()).unwrap()),
        Box::new(Sigmoid::new(4).unwrap()),
        Box::new(Linear::gaussian(4, 3, 0.5, rng).unwrap()),
    ];
    Sequential::new(layers, 8).unwrap()
}

/// Trains `model` for `steps` SGD steps on a fixed random problem, so that every parameter and
/// running statistic moves away from its initial value.
fn train(model: &mut Sequential<f32>, steps: usize) {
    let mut rng = Rng::new(7);
    let mut sgd = Sgd::new(
        SgdConfig {
            lr: 0.1,
            ..SgdConfig::default()
        },
        model,
    )
    .unwrap();
    let ce = SoftmaxCrossEntropy::new(3).unwrap();
    let labels = [0u8, 1, 2, 1, 0, 2, 2, 1];
    for _ in 0..steps {
        for v in model.input_mut(8).unwrap() {
            *v = rng.uniform() as f32;
        }
        model.forward(8, Mode::Train).unwrap();
        let (out, grad) = model.output_and_grad(8).unwrap();
        ce.forward_backward(out, &labels, grad).unwrap();
        model.backward(8, false).unwrap();
        sgd.step(model).unwrap();
    }
}

/// The header of a safetensors file as JSON, checked by hand.
fn header(bytes: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // Writers pad the header with spaces so the data start 8-byte aligned.
    assert_eq!((8 + n) % 8, 0);
    let text = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(text.starts_with('{'));
    match serde_json::from_str(text).unwrap() {
        serde_json::Value::Object(m) => m,
        other => panic!("header is {other}"),
    }
}

#[test]
fn saved_model_has_pytorch_keys_dtypes_and_shapes() {
    let mut model = bn_mlp::<f32>(&mut Rng::new(1));
    train(&mut model, 5);
    let bytes = model.state_dict().unwrap().to_bytes().unwrap();

    // What `torch.nn.Sequential(...).state_dict()` holds for this network, in its order.
    let want: &[(&str, &str, &[usize])] = &[
        ("0.weight", "F32", &[5, 6]),
        ("0.bias", "F32", &[5]),
        ("1.weight", "F32", &[5]),
        ("1.bias", "F32", &[5]),
        ("1.running_mean", "F32", &[5]),
        ("1.running_var", "F32", &[5]),
        ("1.num_batches_tracked", "I64", &[]),
        ("3.weight", "F32", &[4, 5]),
        ("3.bias", "F32", &[4]),
        ("4.weight", "F32", &[4]),
        ("4.bias", "F32", &[4]),
        ("4.running_mean", "F32", &[4]),
        ("4.running_var", "F32", &[4]),
        ("4.num_batches_tracked", "I64", &[]),
        ("6.weight", "F32", &[3, 4]),
        ("6.bias", "F32", &[3]),
    ];

    // By hand: the JSON header.
    let h = header(&bytes);
    assert_eq!(h.len(), want.len());
    for &(key, dtype, shape) in want {
        let e = &h[key];
        assert_eq!(e["dtype"], dtype, "{key}");
        let got: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, shape, "{key}");
    }

    // By the reference implementation (the Rust core of Python's `safetensors`, which
    // `safetensors.torch.load_file` uses): the file validates, and the values are the model's.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), want.len());
    for &(key, dtype, shape) in want {
        let t = st.tensor(key).unwrap();
        let expected = match dtype {
            "F32" => safetensors::Dtype::F32,
            _ => safetensors::Dtype::I64,
        };
        assert_eq!((t.dtype(), t.shape()), (expected, shape), "{key}");
    }
    let nbt = st.tensor("4.num_batches_tracked").unwrap();
    assert_eq!(nbt.data(), 5i64.to_le_bytes());
    let bn = model.layers()[1].downcast_ref::<BatchNorm<f32>>().unwrap();
    let rv: Vec<f32> = st
        .tensor("1.running_var")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(rv, bn.inner.running_var);
    assert!(rv.iter().all(|&v| v != 1.0), "training moved the variances");
}

#[test]
fn trained_model_round_trips_exactly() {
    let mut model = bn_mlp::<f32>(&mut Rng::new(2));
    train(&mut model, 4);
    let dir = std::env::temp_dir().join(format!("bn-sd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    model.state_dict().unwrap().write(&path).unwrap();

    // A fresh model with other random weights takes every value back.
    let mut fresh = bn_mlp::<f32>(&mut Rng::new(3));
    let report = fresh
        .load_state_dict(&StateDict::read(&path).unwrap(), true)
        .unwrap();
    assert_eq!(report, LoadReport::default());
    let x: Vec<f32> = (0..48).map(|i| (i as f32 * 0.37).sin()).collect();
    for mode in [Mode::Eval, Mode::BatchStats] {
        let a = model.forward_from(&x, 8, mode).unwrap().to_vec();
        let b = fresh.forward_from(&x, 8, mode).unwrap().to_vec();
        assert_eq!(a, b, "{mode:?}");
    }
    assert_eq!(
        fresh.state_dict().unwrap(),
        model.state_dict().unwrap(),
        "counters included"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn f64_models_save_f64_and_cross_load() {
    let mut m64 = bn_mlp::<f64>(&mut Rng::new(4));
    let sd = m64.state_dict().unwrap();
    assert_eq!(sd.tensors["0.weight"].dtype(), Dtype::F64);
    assert_eq!(sd.tensors["1.num_batches_tracked"].dtype(), Dtype::I64);
    // F64 data into an f32 model: rounded once to nearest, as PyTorch's `copy_`.
    let mut m32 = bn_mlp::<f32>(&mut Rng::new(5));
    m32.load_state_dict(&sd, true).unwrap();
    let w64 = m64.layers()[0].downcast_ref::<Linear<f64>>().unwrap();
    let w32 = m32.layers()[0]
        .downcast_ref::<Linear<f32>>()
        .unwrap()
        .weight
        .clone();
    assert!(w64.weight.iter().zip(&w32).all(|(&a, &b)| a as f32 == b));
    // And back: F32 data into an f64 model widen exactly.
    let mut again = bn_mlp::<f64>(&mut Rng::new(6));
    again
        .load_state_dict(&m32.state_dict().unwrap(), true)
        .unwrap();
    let w = again.layers()[0].downcast_ref::<Linear<f64>>().unwrap();
    assert!(w.weight.iter().zip(&w32).all(|(&a, &b)| a == f64::from(b)));
}

fn core_bn(cfg: BatchNormConfig) -> CoreBn<f32> {
    let mut bn = CoreBn::<f32>::new(3, cfg).unwrap();
    for (i, v) in bn.weight.iter_mut().enumerate() {
        *v = 1.5 + i as f32;
    }
    for (i, v) in bn.running_mean.iter_mut().enumerate() {
        *v = -0.25 * i as f32;
    }
    bn.num_batches_tracked = 11;
    bn
}

fn keys(sd: &StateDict) -> Vec<&str> {
    sd.tensors.keys().map(String::as_str).collect()
}

#[test]
fn batch_norm_entries_follow_affine_and_tracking() {
    let cases = [
        (
            true,
            true,
            vec![
                "p.bias",
                "p.num_batches_tracked",
                "p.running_mean",
                "p.running_var",
                "p.weight",
            ],
        ),
        (
            false,
            true,
            vec!["p.num_batches_tracked", "p.running_mean", "p.running_var"],
        ),
        (true, false, vec!["p.bias", "p.weight"]),
        (false, false, vec![]),
    ];
    for (affine, track_running_stats, want) in cases {
        let cfg = BatchNormConfig {
            affine,
            track_running_stats,
            ..BatchNormConfig::default()
        };
        let bn = core_bn(cfg);
        let mut sd = StateDict::new();
        sd.insert_batch_norm("p", &bn).unwrap();
        assert_eq!(
            keys(&sd),
            want,
            "affine {affine}, tracking {track_running_stats}"
        );
        let mut fresh = CoreBn::<f32>::new(3, cfg).unwrap();
        load_batch_norm(&mut fresh, &sd, "p", true).unwrap();
        assert_eq!(
            (&fresh.weight, &fresh.running_mean),
            (&bn.weight, &bn.running_mean)
        );
    }
    // No prefix: PyTorch's keys for a lone module.
    let mut sd = StateDict::new();
    sd.insert_batch_norm("", &core_bn(BatchNormConfig::default()))
        .unwrap();
    assert_eq!(
        keys(&sd),
        [
            "bias",
            "num_batches_tracked",
            "running_mean",
            "running_var",
            "weight"
        ]
    );
}

/// A saved BN at prefix `p` with one tensor replaced.
fn with(key: &str, t: Tensor) -> StateDict {
    let mut sd = StateDict::new();
    sd.insert_batch_norm("p", &core_bn(BatchNormConfig::default()))
        .unwrap();
    sd.tensors.insert(key.to_owned(), t);
    sd
}

/// Loads strictly into a fresh module, checks that a failure changed nothing.
fn load_err(sd: &StateDict) -> NnError {
    let mut bn = CoreBn::<f32>::new(3, BatchNormConfig::default()).unwrap();
    bn.running_var[1] = 9.0;
    let before = bn.clone();
    let err = load_batch_norm(&mut bn, sd, "p", true).unwrap_err();
    assert_eq!(
        (&bn.weight, &bn.bias, &bn.running_mean, &bn.running_var),
        (
            &before.weight,
            &before.bias,
            &before.running_mean,
            &before.running_var
        )
    );
    assert_eq!(bn.num_batches_tracked, before.num_batches_tracked);
    err
}

#[test]
fn load_errors_name_the_key_and_change_nothing() {
    // Shape.
    let e = load_err(&with(
        "p.running_var",
        Tensor::from_f32(&[4], &[1.0; 4]).unwrap(),
    ));
    assert!(
        matches!(&e, NnError::StateDict(StateDictError::ShapeMismatch { key, expected, got })
        if key == "p.running_var" && expected == &[3] && got == &[4])
    );
    assert!(e.to_string().contains("p.running_var"), "{e}");
    let e = load_err(&with(
        "p.weight",
        Tensor::from_f32(&[3, 1], &[1.0; 3]).unwrap(),
    ));
    assert!(
        matches!(&e, NnError::StateDict(StateDictError::ShapeMismatch { key, .. }) if key == "p.weight")
    );
    // Dtype: integers or halves for a float, floats for the counter.
    let e = load_err(&with("p.bias", Tensor::from_i64(&[3], &[0; 3]).unwrap()));
    assert!(
        matches!(&e, NnError::StateDict(StateDictError::WrongDtype { key, got: Dtype::I64, .. }) if key == "p.bias")
    );
    let half = Tensor::new(Dtype::F16, vec![3], vec![0; 6]).unwrap();
    let e = load_err(&with("p.running_mean", half));
    assert!(
        e.to_string().contains("p.running_mean") && e.to_string().contains("F16"),
        "{e}"
    );
    let e = load_err(&with(
        "p.num_batches_tracked",
        Tensor::from_f32(&[], &[3.0]).unwrap(),
    ));
    assert!(
        matches!(&e, NnError::StateDict(StateDictError::WrongDtype { key, expected: "I64", .. }) if key == "p.num_batches_tracked")
    );
    let e = load_err(&with(
        "p.num_batches_tracked",
        Tensor::from_i64(&[1], &[3]).unwrap(),
    ));
    assert!(matches!(
        &e,
        NnError::StateDict(StateDictError::ShapeMismatch { .. })
    ));
    let e = load_err(&with(
        "p.num_batches_tracked",
        Tensor::from_i64(&[], &[-1]).unwrap(),
    ));
    assert!(matches!(
        &e,
        NnError::StateDict(StateDictError::NegativeCount { value: -1, .. })
    ));
    // Keys.
    let mut missing = with("p.weight", Tensor::from_f32(&[3], &[1.0; 3]).unwrap());
    missing.tensors.remove("p.bias");
    let e = load_err(&missing);
    assert!(
        matches!(&e, NnError::StateDict(StateDictError::KeyMismatch { missing, unexpected })
        if missing == &["p.bias"] && unexpected.is_empty())
    );
    assert!(e.to_string().contains("p.bias"));
    let extra = with("p.running_std", Tensor::from_f32(&[3], &[1.0; 3]).unwrap());
    let e = load_err(&extra);
    assert!(
        matches!(&e, NnError::StateDict(StateDictError::KeyMismatch { missing, unexpected })
        if missing.is_empty() && unexpected == &["p.running_std"])
    );
}

#[test]
fn non_strict_loads_report_and_keep() {
    let mut sd = with("p.extra", Tensor::from_f32(&[1], &[0.0]).unwrap());
    sd.tensors.remove("p.weight");
    // Keys outside the prefix belong to other modules: neither used nor reported.
    sd.tensors.insert(
        "q.weight".into(),
        Tensor::from_f32(&[3], &[0.0; 3]).unwrap(),
    );
    let mut bn = CoreBn::<f32>::new(3, BatchNormConfig::default()).unwrap();
    let report = load_batch_norm(&mut bn, &sd, "p", false).unwrap();
    assert_eq!(report.missing_keys, ["p.weight"]);
    assert_eq!(report.unexpected_keys, ["p.extra"]);
    assert_eq!(bn.weight, [1.0; 3], "missing weight kept");
    assert_eq!(bn.running_mean, [0.0, -0.25, -0.5]);
    assert_eq!(bn.num_batches_tracked, 11);
    // With no prefix, every other key is unexpected.
    let mut lone = StateDict::new();
    lone.insert_batch_norm("", &core_bn(BatchNormConfig::default()))
        .unwrap();
    lone.tensors.insert(
        "q.weight".into(),
        Tensor::from_f32(&[3], &[0.0; 3]).unwrap(),
    );
    let report = load_batch_norm(&mut bn, &lone, "", false).unwrap();
    assert_eq!(report.unexpected_keys, ["q.weight"]);
}

#[test]
fn missing_counter_is_kept_as_pytorch_does() {
    // PyTorch's BatchNorm fills an absent `num_batches_tracked` (pre-1.0 state dicts) with its
    // current value, even under strict loading.
    let mut sd = StateDict::new();
    sd.insert_batch_norm("p", &core_bn(BatchNormConfig::default()))
        .unwrap();
    sd.tensors.remove("p.num_batches_tracked");
    let mut bn = CoreBn::<f32>::new(3, BatchNormConfig::default()).unwrap();
    bn.num_batches_tracked = 4;
    let report = load_batch_norm(&mut bn, &sd, "p", true).unwrap();
    assert_eq!(report, LoadReport::default());
    assert_eq!((bn.num_batches_tracked, bn.weight[2]), (4, 3.5));
}

#[test]
fn model_load_errors_name_the_key() {
    let mut model = bn_mlp::<f32>(&mut Rng::new(8));
    let mut sd = model.state_dict().unwrap();
    sd.tensors.insert(
        "3.weight".into(),
        Tensor::from_f32(&[5, 4], &[0.0; 20]).unwrap(),
    );
    let before = model.state_dict().unwrap();
    let e = model.load_state_dict(&sd, true).unwrap_err();
    assert!(
        matches!(&e, NnError::StateDict(StateDictError::ShapeMismatch { key, expected, got })
        if key == "3.weight" && expected == &[4, 5] && got == &[5, 4])
    );
    assert_eq!(
        model.state_dict().unwrap(),
        before,
        "failed load changed nothing"
    );

    // A stateless layer takes an index but no keys: `2.weight` is unexpected.
    let mut sd = before.clone();
    sd.tensors
        .insert("2.weight".into(), Tensor::from_f32(&[1], &[0.0]).unwrap());
    sd.tensors.remove("6.bias");
    let e = model.load_state_dict(&sd, true).unwrap_err();
    assert!(
        matches!(&e, NnError::StateDict(StateDictError::KeyMismatch { missing, unexpected })
        if missing == &["6.bias"] && unexpected == &["2.weight"])
    );
    let report = model.load_state_dict(&sd, false).unwrap();
    assert_eq!(
        (report.missing_keys, report.unexpected_keys),
        (vec!["6.bias".to_owned()], vec!["2.weight".to_owned()])
    );
}

/// A layer with a parameter that the state-dict module does not know how to name.
#[derive(Debug)]
struct Scale {
    s: Vec<f32>,
    g: Vec<f32>,
}

impl Layer<f32> for Scale {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn in_len(&self) -> usize {
        1
    }
    fn out_len(&self) -> usize {
        1
    }
    fn forward(
        &mut self,
        x: &[f32],
        _n: usize,
        _m: Mode,
        y: &mut [f32],
    ) -> batchnorm_nn::Result<()> {
        for (o, &i) in y.iter_mut().zip(x) {
            *o = i * self.s[0];
        }
        Ok(())
    }
    fn backward(
        &mut self,
        _x: &[f32],
        _y: &[f32],
        _dy: &[f32],
        _n: usize,
        _dx: Option<&mut [f32]>,
    ) -> batchnorm_nn::Result<()> {
        Ok(())
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, f32>)) {
        f(Param {
            name: "s",
            value: &mut self.s,
            grad: &mut self.g,
        });
    }
}

#[test]
fn unknown_layers_with_parameters_are_refused_not_dropped() {
    let layers: Vec<Box<dyn Layer<f32>>> = vec![
        Box::new(Linear::new(1, 1).unwrap()),
        Box::new(Scale {
            s: vec![2.0],
            g: vec![0.0],
        }),
    ];
    let mut model = Sequential::new(layers, 1).unwrap();
    let e = model.state_dict().unwrap_err();
    assert!(matches!(
        e,
        NnError::StateDict(StateDictError::UnsupportedLayer {
            index: 1,
            name: "scale",
            param: "s"
        })
    ));
    assert!(model.load_state_dict(&StateDict::new(), false).is_err());
}

#[test]
fn keys_and_metadata_are_escaped_and_reserved_names_refused() {
    let mut sd = StateDict::new();
    for key in ["a\"b", "back\\slash", "tab\there", "\u{1}ctl", "é.ü", ""] {
        sd.tensors
            .insert(key.into(), Tensor::from_f32(&[1], &[1.5]).unwrap());
    }
    sd.metadata.insert("quote\"".into(), "line\nbreak\\".into());
    let bytes = sd.to_bytes().unwrap();
    assert_eq!(StateDict::from_bytes(&bytes).unwrap(), sd);
    // The reference implementation reads the same keys.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let mut want: Vec<&String> = sd.tensors.keys().collect();
    want.sort();
    assert_eq!(names, want);

    sd.tensors.insert(
        "__metadata__".into(),
        Tensor::from_f32(&[1], &[0.0]).unwrap(),
    );
    assert!(matches!(
        sd.to_bytes(),
        Err(batchnorm_nn::safetensors::SafetensorsError::ReservedKey)
    ));
}
