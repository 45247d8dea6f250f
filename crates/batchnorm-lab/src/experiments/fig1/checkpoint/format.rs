//! The checkpoint JSON (`<net>.json`) as serde types: what is saved, and the checks that a
//! document read back is consistent with itself and with the run's settings.

use serde::{Deserialize, Serialize};

use super::super::network::Variant;
use super::super::train::EvalRecord;
use super::super::Config;
use super::{NetState, FORMAT};
use crate::experiments::sampler::SamplerState;

/// FNV-1a, 64 bits: a cheap check that the weights are the ones the JSON committed.
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A float stored as a string in Rust's shortest round-trip form, so that it parses back to
/// the same bits, NaN and infinities included (JSON numbers cannot hold those).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
struct Exact(f64);

impl From<Exact> for String {
    fn from(v: Exact) -> String {
        format!("{:?}", v.0)
    }
}

impl TryFrom<String> for Exact {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
            .map(Exact)
            .map_err(|_| format!("{s:?} is not a float"))
    }
}

/// `<net>.json`: the checkpoint of one network at the end of `step`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Doc {
    pub(super) format: String,
    pub(super) net: String,
    pub(super) step: usize,
    pub(super) config: SavedConfig,
    /// The weights file's name, length and FNV-1a hash (16 hex digits).
    pub(super) weights: String,
    pub(super) weights_bytes: usize,
    pub(super) weights_fnv1a64: String,
    sampler: SavedSampler,
    window: Window,
    train_seconds: Exact,
    eval_seconds: Exact,
    wall_seconds: Exact,
    evals: Vec<SavedEval>,
}

/// The settings that fix a network's trajectory. Threads, output and data folders and the
/// checkpoint interval change nothing in the results and may differ on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SavedConfig {
    steps: usize,
    lr: Exact,
    batch_size: usize,
    init_std: Exact,
    seed: u64,
    eval_every: usize,
    train_images: usize,
}

/// The batch order: the generator, the current epoch's permutation and the position in it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedSampler {
    rng: [u64; 4],
    spare_normal: Option<Exact>,
    pos: usize,
    order: Vec<usize>,
}

/// The running sums since the last evaluation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    loss_sum: Exact,
    correct: usize,
    since: usize,
}

/// One evaluation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedEval {
    step: usize,
    train_loss: Exact,
    train_accuracy: Exact,
    test_accuracy: Exact,
    percentiles: [Exact; 3],
}

impl SavedConfig {
    pub(super) fn new(cfg: &Config, train_len: usize) -> Self {
        SavedConfig {
            steps: cfg.steps,
            lr: Exact(cfg.lr),
            batch_size: cfg.batch_size,
            init_std: Exact(cfg.init_std),
            seed: cfg.seed,
            eval_every: cfg.eval_every,
            train_images: train_len,
        }
    }

    /// `--option: checkpoint X, now Y` for each setting that differs from `now`.
    pub(super) fn diffs(&self, now: &SavedConfig) -> Vec<String> {
        let pairs = [
            ("--steps", self.steps.to_string(), now.steps.to_string()),
            ("--lr", self.lr.0.to_string(), now.lr.0.to_string()),
            (
                "--batch-size",
                self.batch_size.to_string(),
                now.batch_size.to_string(),
            ),
            (
                "--init-std",
                self.init_std.0.to_string(),
                now.init_std.0.to_string(),
            ),
            ("--seed", self.seed.to_string(), now.seed.to_string()),
            (
                "--eval-every",
                self.eval_every.to_string(),
                now.eval_every.to_string(),
            ),
            (
                "training images in --data",
                self.train_images.to_string(),
                now.train_images.to_string(),
            ),
        ];
        pairs
            .into_iter()
            .filter(|(_, was, is)| was != is)
            .map(|(option, was, is)| format!("{option}: checkpoint {was}, now {is}"))
            .collect()
    }
}

impl Doc {
    pub(super) fn new(
        variant: Variant,
        cfg: &Config,
        s: &NetState,
        sampler: &SamplerState,
        weights: &str,
        bytes: &[u8],
    ) -> Self {
        let (rng, spare) = sampler.rng;
        Doc {
            format: FORMAT.into(),
            net: variant.key().into(),
            step: s.step,
            config: SavedConfig::new(cfg, sampler.order.len()),
            weights: weights.into(),
            weights_bytes: bytes.len(),
            weights_fnv1a64: format!("{:016x}", fnv1a64(bytes)),
            sampler: SavedSampler {
                rng,
                spare_normal: spare.map(Exact),
                pos: sampler.pos,
                order: sampler.order.clone(),
            },
            window: Window {
                loss_sum: Exact(s.loss_sum),
                correct: s.correct,
                since: s.since,
            },
            train_seconds: Exact(s.train_seconds),
            eval_seconds: Exact(s.eval_seconds),
            wall_seconds: Exact(s.wall_seconds),
            evals: s
                .evals
                .iter()
                .map(|e| SavedEval {
                    step: e.step,
                    train_loss: Exact(e.train_loss),
                    train_accuracy: Exact(e.train_accuracy),
                    test_accuracy: Exact(e.test_accuracy),
                    percentiles: e.percentiles.map(Exact),
                })
                .collect(),
        }
    }

    /// The state and batch order, checked for consistency with each other and with `cfg`.
    pub(super) fn state(self, cfg: &Config) -> Result<(NetState, SamplerState), String> {
        let step = self.step;
        if step > cfg.steps {
            return Err(format!("step {step} is outside 0..={}", cfg.steps));
        }
        let sampler = SamplerState {
            rng: (self.sampler.rng, self.sampler.spare_normal.map(|v| v.0)),
            order: self.sampler.order,
            pos: self.sampler.pos,
        };
        let evals = self
            .evals
            .iter()
            .map(|e| EvalRecord {
                step: e.step,
                train_loss: e.train_loss.0,
                train_accuracy: e.train_accuracy.0,
                test_accuracy: e.test_accuracy.0,
                percentiles: e.percentiles.map(|p| p.0),
            })
            .collect();
        let state = NetState {
            step,
            loss_sum: self.window.loss_sum.0,
            correct: self.window.correct,
            since: self.window.since,
            train_seconds: self.train_seconds.0,
            eval_seconds: self.eval_seconds.0,
            wall_seconds: self.wall_seconds.0,
            evals,
        };
        // The evaluations are those an uninterrupted run makes up to `step` (none in the
        // checkpoint saved at step 0, before the first evaluation), and the window counts the
        // steps after the last one.
        let due = |k: usize| k.is_multiple_of(cfg.eval_every) || k == cfg.steps;
        let want: Vec<usize> = if step == 0 {
            Vec::new()
        } else {
            (0..=step).filter(|&k| k == 0 || due(k)).collect()
        };
        let got: Vec<usize> = state.evals.iter().map(|e| e.step).collect();
        if got != want {
            return Err(format!("evaluations at steps {got:?}, expected {want:?}"));
        }
        let last = want.last().copied().unwrap_or(0);
        if state.since != step - last || state.correct > state.since * cfg.batch_size {
            return Err(format!(
                "window of {} steps and {} correct after the evaluation at step {last}, at step {step}",
                state.since, state.correct
            ));
        }
        Ok((state, sampler))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_bit_for_bit() {
        for v in [
            0.1,
            1.0 / 3.0,
            f64::NAN,
            f64::INFINITY,
            -0.0,
            5e-324,
            f64::MAX,
            0.9123000000000001,
        ] {
            let text = serde_json::to_string(&Exact(v)).unwrap();
            let back: Exact = serde_json::from_str(&text).unwrap();
            assert_eq!(back.0.to_bits(), v.to_bits(), "{v:?} as {text}");
        }
        assert!(serde_json::from_str::<Exact>("\"one\"").is_err());
        assert!(
            serde_json::from_str::<Exact>("0.5").is_err(),
            "a number, not a string"
        );
    }

    #[test]
    fn a_document_round_trips_and_refuses_unknown_or_missing_fields() {
        let cfg = Config {
            steps: 10,
            eval_every: 5,
            ..Config::default()
        };
        let mut state = NetState::start(0.25);
        state.step = 7;
        state.since = 2;
        state.correct = 100;
        state.loss_sum = f64::NAN;
        for step in [0, 5] {
            state.evals.push(EvalRecord {
                step,
                train_loss: 0.5,
                train_accuracy: 0.75,
                test_accuracy: 0.875,
                percentiles: [-1.0, 0.0, 1.0],
            });
        }
        let sampler = SamplerState {
            rng: ([1, 2, 3, u64::MAX], Some(-0.3)),
            order: vec![2, 0, 1],
            pos: 2,
        };
        let doc = Doc::new(
            Variant::BatchNorm,
            &cfg,
            &state,
            &sampler,
            "bn-00000007.safetensors",
            b"x",
        );
        let text = serde_json::to_string(&doc).unwrap();
        let back: Doc = serde_json::from_str(&text).unwrap();
        let (st, sa) = back.state(&cfg).unwrap();
        assert_eq!(st.loss_sum.to_bits(), f64::NAN.to_bits());
        assert_eq!(
            (st.step, st.since, st.correct, st.wall_seconds),
            (7, 2, 100, 0.25)
        );
        assert_eq!(st.evals, state.evals);
        assert_eq!(
            (sa.rng, sa.order, sa.pos),
            (sampler.rng, sampler.order, sampler.pos)
        );

        let extra = text.replacen('{', "{\"surprise\":1,", 1);
        let e = serde_json::from_str::<Doc>(&extra).unwrap_err().to_string();
        assert!(e.contains("surprise"), "{e}");
        let missing = text.replace("\"wall_seconds\"", "\"wall_secs\"");
        assert!(serde_json::from_str::<Doc>(&missing).is_err());

        // Other settings: one line per differing option, floats compared by value.
        let mut other = cfg.clone();
        other.steps = 20;
        other.lr = 0.010;
        let diffs = doc.config.diffs(&SavedConfig::new(&other, 3));
        assert_eq!(diffs, ["--steps: checkpoint 10, now 20"]);
    }

    #[test]
    fn fnv1a64_reference_values() {
        // From the FNV reference test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
