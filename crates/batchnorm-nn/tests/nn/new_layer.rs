//! A new kind of layer is one new file: a layer defined here, outside the crate, is saved and
//! loaded as a state dict, folded with a following batch normalization, copied and widened to
//! f64, through its own `Layer` methods, without any list in the crate naming it.

use batchnorm::BatchNormConfig;
use batchnorm_nn::fold::{fold_batch_norm, fold_into_linear, FoldError};
use batchnorm_nn::layers::{
    BatchNorm, Layer, Linear, Mode, Param, Sigmoid, StateEntry, StateValue,
};
use batchnorm_nn::{Result, Rng, Sequential};

/// `y = W x + b` with PyTorch's names `w` and `b` (as a hypothetical `Dense` module would have):
/// a Linear under another name and another state-dict layout.
#[derive(Debug, Clone)]
struct Dense(Linear<f64>);

impl Layer<f64> for Dense {
    fn name(&self) -> &'static str {
        "dense"
    }
    fn in_len(&self) -> usize {
        Layer::<f64>::in_len(&self.0)
    }
    fn out_len(&self) -> usize {
        Layer::<f64>::out_len(&self.0)
    }
    fn forward(&mut self, x: &[f64], n: usize, mode: Mode, y: &mut [f64]) -> Result<()> {
        self.0.forward(x, n, mode, y)
    }
    fn backward(
        &mut self,
        x: &[f64],
        y: &[f64],
        dy: &[f64],
        n: usize,
        dx: Option<&mut [f64]>,
    ) -> Result<()> {
        self.0.backward(x, y, dy, n, dx)
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, f64>)) {
        self.0.visit_params(f);
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(StateEntry<'_, f64>)) {
        let (out, inp) = (self.out_len(), self.in_len());
        f(StateEntry {
            name: "w",
            shape: vec![out, inp],
            value: StateValue::Float(&mut self.0.weight),
        });
        f(StateEntry {
            name: "b",
            shape: vec![out],
            value: StateValue::Float(&mut self.0.bias),
        });
    }
    fn boxed_clone(&self) -> Option<Box<dyn Layer<f64>>> {
        Some(Box::new(self.clone()))
    }
    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        Some(Box::new(self.clone()))
    }
    fn fold_batch_norm(
        &self,
        bn: &BatchNorm<f64>,
    ) -> Option<std::result::Result<Box<dyn Layer<f64>>, FoldError>> {
        Some(fold_into_linear(&self.0, bn).map(|l| Box::new(Dense(l)) as Box<dyn Layer<f64>>))
    }
}

fn model(seed: u64) -> Sequential<f64> {
    let mut rng = Rng::new(seed);
    let mut bn = BatchNorm::new(&[3], BatchNormConfig::default()).unwrap();
    bn.inner.running_mean = vec![0.5, -1.0, 0.25];
    bn.inner.running_var = vec![2.0, 0.5, 1.5];
    bn.inner.weight = vec![1.5, 0.75, -1.0];
    bn.inner.bias = vec![0.1, 0.0, -0.2];
    let layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Dense(Linear::gaussian(4, 3, 0.5, &mut rng).unwrap())),
        Box::new(bn),
        Box::new(Sigmoid::new(3).unwrap()),
    ];
    Sequential::new(layers, 2).unwrap()
}

#[test]
fn a_layer_defined_elsewhere_takes_part_in_state_dicts_and_folding() {
    let mut m = model(1);
    let sd = m.state_dict().unwrap();
    let keys: Vec<&str> = sd.tensors.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "0.b",
            "0.w",
            "1.bias",
            "1.num_batches_tracked",
            "1.running_mean",
            "1.running_var",
            "1.weight"
        ]
    );
    // Loaded into another model of the same structure: the same outputs.
    let mut other = model(2);
    other.load_state_dict(&sd, true).unwrap();
    let x = [0.5, -1.0, 2.0, 0.25, 1.0, 0.0, -0.5, 3.0];
    let a = m.forward_from(&x, 2, Mode::Eval).unwrap().to_vec();
    assert_eq!(other.forward_from(&x, 2, Mode::Eval).unwrap(), a);

    // Folded: two layers, the Dense absorbing the batch normalization.
    let mut folded = fold_batch_norm(&m).unwrap();
    let names: Vec<&str> = folded.layers().iter().map(|l| l.name()).collect();
    assert_eq!(names, ["dense", "sigmoid"]);
    let b = folded.forward_from(&x, 2, Mode::Eval).unwrap();
    for (a, b) in a.iter().zip(b) {
        // f64 throughout: the folded map differs by a few roundings of values of order 1.
        assert!((a - b).abs() < 1e-14, "{a} vs {b}");
    }
    // Widened copies exist for every layer (the lab's f64 oracle builds on this).
    assert!(m.layers().iter().all(|l| l.to_f64().is_some()));
}
