//! Churn: changes drawn from the model's current objects by a weighted mix (pod add and
//! delete, pod label change, policy add and delete, namespace label change), each one
//! object, as the commands the model applies and the document the store is sent.

use std::fmt;
use std::str::FromStr;

use palisade_policy::model::Command;

use super::model::Model;
use crate::manifests;
use crate::synth::{self, Rng, Shape};

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    PodAdd,
    PodDelete,
    PodLabel,
    PolicyAdd,
    PolicyDelete,
    NsLabel,
}

const OPS: [(Op, &str); 6] = [
    (Op::PodAdd, "pod-add"),
    (Op::PodDelete, "pod-delete"),
    (Op::PodLabel, "pod-label"),
    (Op::PolicyAdd, "policy-add"),
    (Op::PolicyDelete, "policy-delete"),
    (Op::NsLabel, "ns-label"),
];

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = OPS.iter().find(|(o, _)| o == self).expect("listed").1;
        f.write_str(name)
    }
}

/// Weights of the operations: `pod-add=3,pod-delete=3,...` (operations not named weigh 0).
#[derive(Clone, Debug)]
pub struct Mix(pub Vec<(Op, u32)>);

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected OPERATION=WEIGHT"))?;
            let op = OPS
                .iter()
                .find(|(_, n)| *n == name.trim())
                .ok_or_else(|| {
                    let names: Vec<&str> = OPS.iter().map(|(_, n)| *n).collect();
                    format!("{name:?} is not an operation (one of {})", names.join(", "))
                })?
                .0;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            out.push((op, weight));
        }
        if out.iter().all(|(_, w)| *w == 0) {
            return Err("the mix must give some operation a weight above 0".into());
        }
        Ok(Mix(out))
    }
}

/// One change: what the store is sent and what the model applies once it is acknowledged.
pub struct Change {
    pub op: Op,
    pub delete: bool,
    pub document: String,
    pub commands: Vec<Command>,
}

pub struct Churn {
    rng: Rng,
    mix: Mix,
    shape: Shape,
    made: usize,
}

impl Churn {
    pub fn new(mix: Mix, shape: &Shape) -> Churn {
        Churn {
            rng: Rng::new(shape.seed ^ 0xc4a2),
            mix,
            shape: shape.clone(),
            made: 0,
        }
    }

    fn draw(&mut self) -> Op {
        let total: u32 = self.mix.0.iter().map(|(_, w)| w).sum();
        let mut at = self.rng.below(total as usize) as u32;
        for (op, w) in &self.mix.0 {
            if at < *w {
                return *op;
            }
            at -= w;
        }
        unreachable!("a weight above 0 exists")
    }

    /// The next change against the model's current objects.
    pub fn next(&mut self, model: &Model) -> Change {
        let n = self.made;
        self.made += 1;
        let op = self.draw();
        let ns_index = self.rng.below(self.shape.namespaces);
        let (delete, command) = match op {
            Op::PodDelete if !model.pods.is_empty() => {
                let p = model.pods.pick(&mut self.rng).expect("not empty");
                (true, Command::UpsertPod(p.clone()))
            }
            Op::PodLabel if !model.pods.is_empty() => {
                let mut p = model.pods.pick(&mut self.rng).expect("not empty").clone();
                let app = self.rng.below(synth::APPS_PER_NAMESPACE);
                p.labels.insert("app".into(), format!("app{app}"));
                (false, Command::UpsertPod(p))
            }
            Op::PolicyDelete if !model.policies.is_empty() => {
                let p = model.policies.pick(&mut self.rng).expect("not empty");
                (true, Command::UpsertPolicy(p.clone()))
            }
            Op::PolicyAdd => {
                let mix = synth::policies(ns_index, 9);
                let mut p = mix[self.rng.below(mix.len())].clone();
                p.key.name = format!("churn-{n}").into();
                (false, Command::UpsertPolicy(p))
            }
            Op::NsLabel => {
                let mut ns = match model.namespaces.pick(&mut self.rng) {
                    Some(ns) => ns.clone(),
                    None => synth::namespace(ns_index, 0),
                };
                let env = ["prod", "staging", "dev"][self.rng.below(3)];
                ns.labels.insert("env".into(), env.into());
                (false, Command::UpsertNamespace(ns))
            }
            // A pod added (also when there was nothing to delete or relabel).
            _ => {
                let pod = synth::pod(
                    &synth::ns_name(ns_index),
                    format!("churn-{n}"),
                    self.rng.below(synth::APPS_PER_NAMESPACE),
                    self.rng.below(self.shape.nodes),
                    synth::pod_ip(self.shape.pods + n),
                );
                (false, Command::UpsertPod(pod))
            }
        };
        let document = manifests::document(&command).expect("an upsert");
        let command = if delete {
            match command {
                Command::UpsertPod(p) => Command::DeletePod(p.key),
                Command::UpsertPolicy(p) => Command::DeletePolicy(p.key),
                other => other,
            }
        } else {
            command
        };
        Change {
            op,
            delete,
            document,
            commands: vec![command],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_reads_weights_and_names_what_is_wrong() {
        let m: Mix = "pod-add=3, ns-label=1".parse().unwrap();
        assert_eq!(m.0, vec![(Op::PodAdd, 3), (Op::NsLabel, 1)]);
        assert!("pod-add"
            .parse::<Mix>()
            .unwrap_err()
            .contains("OPERATION=WEIGHT"));
        assert!("pods=1".parse::<Mix>().unwrap_err().contains("one of"));
        assert!("pod-add=x".parse::<Mix>().unwrap_err().contains("whole"));
        assert!("pod-add=0".parse::<Mix>().unwrap_err().contains("above 0"));
    }

    #[test]
    fn changes_follow_the_mix_and_the_model() {
        let shape = Shape {
            nodes: 5,
            pods: 50,
            namespaces: 8,
            policies: 16,
            seed: 2,
        };
        let mut model = Model::default();
        model.apply(0, 1, synth::commands(&shape).collect());
        let mut churn = Churn::new("pod-delete=1".parse().unwrap(), &shape);
        let c = churn.next(&model);
        assert!(c.delete);
        assert!(matches!(c.commands[0], Command::DeletePod(_)));
        let before = model.pods.len();
        model.apply(1, 2, c.commands);
        assert_eq!(model.pods.len(), before - 1);
        assert_eq!(model.deleted.len(), 1);
        let mut churn = Churn::new("policy-add=1".parse().unwrap(), &shape);
        let c = churn.next(&model);
        assert!(!c.delete && c.document.contains("churn-0"));
    }
}
