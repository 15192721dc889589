//! The fused operations on Flex (Burn's CPU backend): the CPU kernels of [`crate::kernel::cpu`]
//! run on the tensors' slices, their outputs handed over through [`crate::kernel::buffer`].

use burn::backend::TensorMetadata;
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, TensorData};

use super::ops::{FusedConfusionOps, FusedPointwiseOps, FusedStatsOps};
use crate::input::{Activation, TargetOf};
use crate::kernel::buffer;
use crate::kernel::cpu::{self, Dims, Label, TargetRef, confusion};
use crate::kernel::spec::{Pointwise, Spec};

fn floats(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    assert_eq!(
        t.dtype(),
        DType::F32,
        "segloss's fused kernel computes in f32, got {:?}",
        t.dtype()
    );
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("contiguous f32")
                .to_vec(),
        ),
    }
}

/// The target of one call: a label map or dense values.
type Target<'a> = TargetOf<&'a FlexTensor, &'a FlexTensor>;

/// What one call computes, from which input.
enum Job<'a> {
    /// The forward's output from the logits.
    Stats(&'a [f32]),
    /// The forward's output and the activations `[B, C, N]` from the logits.
    Saving(&'a [f32]),
    /// The gradient `[B, C, N]` from the logits, given the output's gradient.
    Gradient(&'a [f32], &'a [f32]),
    /// The gradient written over the saved activations, given the output's gradient.
    InPlace(&'a mut [f32], &'a [f32]),
}

/// A computation over the target as a slice, for any label type.
trait TargetJob {
    fn run<L: Label>(self, t: TargetRef<'_, L>, m: Option<&[f32]>) -> Vec<Vec<f32>>;
}

/// Runs `job` with the target as a slice: dense values, or labels as `i64` or `i32` (other
/// integer types are converted). A mask with no elements means no mask.
fn with_target(job: impl TargetJob, target: Target<'_>, mask: &FlexTensor) -> Vec<Vec<f32>> {
    let m = (mask.shape().num_elements() > 0).then(|| floats(mask));
    let m = m.as_deref();
    match target {
        Target::Dense(t) => job.run::<i64>(TargetRef::Dense(&floats(t)), m),
        Target::Labels(l) => {
            let l = l.to_contiguous();
            match l.dtype() {
                DType::I64 => job.run(
                    TargetRef::Labels(l.as_slice::<i64>().expect("i64 labels")),
                    m,
                ),
                DType::I32 => job.run(
                    TargetRef::Labels(l.as_slice::<i32>().expect("i32 labels")),
                    m,
                ),
                _ => {
                    let v: Vec<i64> = l
                        .into_data()
                        .convert::<i64>()
                        .try_to_vec()
                        .expect("labels as i64");
                    job.run(TargetRef::Labels(&v), m)
                }
            }
        }
    }
}

/// One call of the overlap statistics' kernel ([`cpu`]): the job, the sizes, the options and
/// the pointwise term, when its rows are wanted.
struct StatsJob<'a> {
    job: Job<'a>,
    d: Dims,
    s: Spec,
    pw: Option<Pointwise>,
}

impl TargetJob for StatsJob<'_> {
    fn run<L: Label>(self, t: TargetRef<'_, L>, m: Option<&[f32]>) -> Vec<Vec<f32>> {
        let StatsJob { job, d, s, pw } = self;
        match (job, pw) {
            (Job::Stats(x), None) => vec![cpu::forward(x, t, m, d, s)],
            (Job::Stats(x), Some(pw)) => vec![cpu::pointwise_forward(x, t, m, d, s, pw)],
            (Job::Saving(x), pw) => {
                let (stats, p) = match pw {
                    None => cpu::forward_saving(x, t, m, d, s),
                    Some(pw) => cpu::pointwise_forward_saving(x, t, m, d, s, pw),
                };
                vec![stats, p]
            }
            (Job::Gradient(x, g), None) => vec![cpu::backward(x, t, m, g, d, s)],
            (Job::Gradient(x, g), Some(pw)) => {
                vec![cpu::pointwise_backward(x, t, m, g, d, s, pw)]
            }
            (Job::InPlace(p, g), pw) => {
                match pw {
                    None => cpu::backward_in_place(p, t, m, g, d, s),
                    Some(pw) => cpu::pointwise_backward_in_place(p, t, m, g, d, s, pw),
                }
                Vec::new()
            }
        }
    }
}

/// Runs the statistics' `job` (see [`with_target`]). `pw`: the pointwise term, when its rows
/// are wanted.
fn run(
    job: Job<'_>,
    target: Target<'_>,
    mask: &FlexTensor,
    d: Dims,
    s: Spec,
    pw: Option<Pointwise>,
) -> Vec<Vec<f32>> {
    with_target(StatsJob { job, d, s, pw }, target, mask)
}

/// One call of the confusion matrix's kernel ([`confusion`]).
struct ConfusionJob<'a> {
    job: Job<'a>,
    d: Dims,
}

impl TargetJob for ConfusionJob<'_> {
    fn run<L: Label>(self, t: TargetRef<'_, L>, m: Option<&[f32]>) -> Vec<Vec<f32>> {
        let d = self.d;
        match self.job {
            Job::Stats(x) => vec![confusion::forward(x, t, m, d)],
            Job::Saving(x) => {
                let (out, p) = confusion::forward_saving(x, t, m, d);
                vec![out, p]
            }
            Job::Gradient(x, g) => vec![confusion::backward(x, t, m, g, d)],
            Job::InPlace(p, g) => {
                confusion::backward_in_place(p, t, m, g, d);
                Vec::new()
            }
        }
    }
}

fn dims(logits: &FlexTensor) -> Dims {
    let [b, c, n] = logits.shape().dims::<3>();
    Dims { b, c, n }
}

/// A kernel output as a tensor; a prediction-sized one returns to the buffer cache when
/// dropped ([`super::super::buffer`]).
fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::from_bytes(
        buffer::into_bytes(values),
        shape,
        DType::F32,
    ))
}

/// Rows of the output: 4 overlap statistics, and 4 pointwise sums with `pw`.
fn rows(pw: Option<Pointwise>) -> usize {
    if pw.is_some() { cpu::ROWS_MAX } else { 4 }
}

fn stats(
    logits: &FlexTensor,
    target: Target<'_>,
    mask: &FlexTensor,
    s: Spec,
    pw: Option<Pointwise>,
) -> FlexTensor {
    let d = dims(logits);
    let out = run(Job::Stats(&floats(logits)), target, mask, d, s, pw).remove(0);
    tensor(out, vec![rows(pw), d.b, d.k(&s)])
}

/// Whether the backward starts from the logits rather than saved activations: without an
/// activation (they are the logits), and for the sigmoid's pointwise term (its gradient
/// needs the logits, which the activations do not give back precisely where they saturate).
fn keeps_logits(s: Spec, pw: Option<Pointwise>) -> bool {
    s.act == Activation::None || (pw.is_some() && s.act != Activation::Softmax)
}

/// The statistics and what the backward starts from: the activations, or the logits
/// themselves without an activation.
fn saving(
    logits: FlexTensor,
    target: Target<'_>,
    mask: &FlexTensor,
    s: Spec,
    pw: Option<Pointwise>,
) -> (FlexTensor, FlexTensor) {
    if keeps_logits(s, pw) {
        return (stats(&logits, target, mask, s, pw), logits);
    }
    let d = dims(&logits);
    let mut out = run(Job::Saving(&floats(&logits)), target, mask, d, s, pw);
    let p = out.pop().expect("activations");
    (
        tensor(out.pop().expect("statistics"), vec![rows(pw), d.b, d.k(&s)]),
        tensor(p, vec![d.b, d.c, d.n]),
    )
}

fn gradient(
    logits: &FlexTensor,
    target: Target<'_>,
    mask: &FlexTensor,
    grad: &FlexTensor,
    s: Spec,
    pw: Option<Pointwise>,
) -> FlexTensor {
    let d = dims(logits);
    let out = run(
        Job::Gradient(&floats(logits), &floats(grad)),
        target,
        mask,
        d,
        s,
        pw,
    )
    .remove(0);
    tensor(out, vec![d.b, d.c, d.n])
}

/// The gradient from what [`saving`] returned: in place over the activations when this call
/// owns their buffer (the usual case: the backward step consumes its state), else on a copy.
fn gradient_saved(
    saved: FlexTensor,
    target: Target<'_>,
    mask: &FlexTensor,
    grad: &FlexTensor,
    s: Spec,
    pw: Option<Pointwise>,
) -> FlexTensor {
    if keeps_logits(s, pw) {
        return gradient(&saved, target, mask, grad, s, pw);
    }
    let d = dims(&saved);
    let mut p = owned(saved);
    let len = d.b * d.c * d.n;
    let values = &mut p.try_storage_mut::<f32>().expect("a uniquely owned buffer")[..len];
    run(Job::InPlace(values, &floats(grad)), target, mask, d, s, pw);
    p
}

/// `saved` as a contiguous f32 buffer that this call owns, to be overwritten: itself when
/// nothing else holds it (the usual case: the backward step consumes its state), else a copy.
fn owned(saved: FlexTensor) -> FlexTensor {
    let d = dims(&saved);
    let len = d.b * d.c * d.n;
    if saved.layout().contiguous_offsets() == Some((0, len))
        && saved.dtype() == DType::F32
        && saved.is_unique()
    {
        saved
    } else {
        tensor(floats(&saved).into_owned(), vec![d.b, d.c, d.n])
    }
}

/// The confusion matrix `[B, C, C + 1]` of the logits.
fn confusion_out(logits: &FlexTensor, target: Target<'_>, mask: &FlexTensor) -> FlexTensor {
    let d = dims(logits);
    let job = ConfusionJob {
        job: Job::Stats(&floats(logits)),
        d,
    };
    tensor(
        with_target(job, target, mask).remove(0),
        vec![d.b, d.c, d.c + 1],
    )
}

/// The confusion matrix and the probabilities, written in the same pass.
fn confusion_saving(
    logits: FlexTensor,
    target: Target<'_>,
    mask: &FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let d = dims(&logits);
    let job = ConfusionJob {
        job: Job::Saving(&floats(&logits)),
        d,
    };
    let mut out = with_target(job, target, mask);
    let p = out.pop().expect("probabilities");
    (
        tensor(
            out.pop().expect("confusion matrix"),
            vec![d.b, d.c, d.c + 1],
        ),
        tensor(p, vec![d.b, d.c, d.n]),
    )
}

/// The gradient from the probabilities that [`confusion_saving`] returned, written over them
/// when this call owns their buffer (see [`owned`]).
fn confusion_gradient_saved(
    saved: FlexTensor,
    target: Target<'_>,
    mask: &FlexTensor,
    grad: &FlexTensor,
) -> FlexTensor {
    let d = dims(&saved);
    let mut p = owned(saved);
    let len = d.b * d.c * d.n;
    let values = &mut p.try_storage_mut::<f32>().expect("a uniquely owned buffer")[..len];
    let job = ConfusionJob {
        job: Job::InPlace(values, &floats(grad)),
        d,
    };
    with_target(job, target, mask);
    p
}

impl FusedStatsOps for Flex {
    fn overlap_stats_labels(
        logits: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        spec: Spec,
    ) -> FlexTensor {
        stats(&logits, Target::Labels(&labels), &mask, spec, None)
    }

    fn overlap_stats_labels_backward(
        logits: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        grad: FlexTensor,
        spec: Spec,
    ) -> FlexTensor {
        gradient(&logits, Target::Labels(&labels), &mask, &grad, spec, None)
    }

    fn overlap_stats_dense(
        logits: FlexTensor,
        target: FlexTensor,
        mask: FlexTensor,
        spec: Spec,
    ) -> FlexTensor {
        stats(&logits, Target::Dense(&target), &mask, spec, None)
    }

    fn overlap_stats_dense_backward(
        logits: FlexTensor,
        target: FlexTensor,
        mask: FlexTensor,
        grad: FlexTensor,
        spec: Spec,
    ) -> FlexTensor {
        gradient(&logits, Target::Dense(&target), &mask, &grad, spec, None)
    }

    fn overlap_stats_labels_saving(
        logits: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        spec: Spec,
    ) -> (FlexTensor, FlexTensor) {
        saving(logits, Target::Labels(&labels), &mask, spec, None)
    }

    fn overlap_stats_labels_backward_saved(
        saved: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        grad: FlexTensor,
        spec: Spec,
    ) -> FlexTensor {
        gradient_saved(saved, Target::Labels(&labels), &mask, &grad, spec, None)
    }

    fn overlap_stats_dense_saving(
        logits: FlexTensor,
        target: FlexTensor,
        mask: FlexTensor,
        spec: Spec,
    ) -> (FlexTensor, FlexTensor) {
        saving(logits, Target::Dense(&target), &mask, spec, None)
    }

    fn overlap_stats_dense_backward_saved(
        saved: FlexTensor,
        target: FlexTensor,
        mask: FlexTensor,
        grad: FlexTensor,
        spec: Spec,
    ) -> FlexTensor {
        gradient_saved(saved, Target::Dense(&target), &mask, &grad, spec, None)
    }
}

impl FusedPointwiseOps for Flex {
    fn pointwise_stats_labels(
        logits: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        activation: Activation,
        pw: Pointwise,
    ) -> FlexTensor {
        stats(
            &logits,
            Target::Labels(&labels),
            &mask,
            Spec::plain(activation),
            Some(pw),
        )
    }

    fn pointwise_stats_dense(
        logits: FlexTensor,
        target: FlexTensor,
        mask: FlexTensor,
        activation: Activation,
        pw: Pointwise,
    ) -> FlexTensor {
        stats(
            &logits,
            Target::Dense(&target),
            &mask,
            Spec::plain(activation),
            Some(pw),
        )
    }

    fn pointwise_stats_labels_saving(
        logits: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        activation: Activation,
        pw: Pointwise,
    ) -> (FlexTensor, FlexTensor) {
        saving(
            logits,
            Target::Labels(&labels),
            &mask,
            Spec::plain(activation),
            Some(pw),
        )
    }

    fn pointwise_stats_dense_saving(
        logits: FlexTensor,
        target: FlexTensor,
        mask: FlexTensor,
        activation: Activation,
        pw: Pointwise,
    ) -> (FlexTensor, FlexTensor) {
        saving(
            logits,
            Target::Dense(&target),
            &mask,
            Spec::plain(activation),
            Some(pw),
        )
    }

    fn pointwise_stats_labels_backward_saved(
        saved: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        grad: FlexTensor,
        activation: Activation,
        pw: Pointwise,
    ) -> FlexTensor {
        gradient_saved(
            saved,
            Target::Labels(&labels),
            &mask,
            &grad,
            Spec::plain(activation),
            Some(pw),
        )
    }

    fn pointwise_stats_dense_backward_saved(
        saved: FlexTensor,
        target: FlexTensor,
        mask: FlexTensor,
        grad: FlexTensor,
        activation: Activation,
        pw: Pointwise,
    ) -> FlexTensor {
        gradient_saved(
            saved,
            Target::Dense(&target),
            &mask,
            &grad,
            Spec::plain(activation),
            Some(pw),
        )
    }
}

impl FusedConfusionOps for Flex {
    fn confusion_labels(logits: FlexTensor, labels: FlexTensor, mask: FlexTensor) -> FlexTensor {
        confusion_out(&logits, Target::Labels(&labels), &mask)
    }

    fn confusion_dense(logits: FlexTensor, target: FlexTensor, mask: FlexTensor) -> FlexTensor {
        confusion_out(&logits, Target::Dense(&target), &mask)
    }

    fn confusion_labels_saving(
        logits: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        confusion_saving(logits, Target::Labels(&labels), &mask)
    }

    fn confusion_dense_saving(
        logits: FlexTensor,
        target: FlexTensor,
        mask: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        confusion_saving(logits, Target::Dense(&target), &mask)
    }

    fn confusion_labels_backward_saved(
        saved: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        grad: FlexTensor,
    ) -> FlexTensor {
        confusion_gradient_saved(saved, Target::Labels(&labels), &mask, &grad)
    }

    fn confusion_dense_backward_saved(
        saved: FlexTensor,
        target: FlexTensor,
        mask: FlexTensor,
        grad: FlexTensor,
    ) -> FlexTensor {
        confusion_gradient_saved(saved, Target::Dense(&target), &mask, &grad)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::tensor::TensorData;

    use super::super::ops::FusedStatsOps;
    use crate::input::Activation;
    use crate::kernel::spec::Spec;

    fn values(t: &FlexTensor) -> Vec<f32> {
        t.clone().into_data().try_to_vec::<f32>().unwrap()
    }

    /// The saved activations become the gradient in place when the backward owns them, and are
    /// copied (left intact) when something else still holds them; both equal the recomputing
    /// backward.
    #[test]
    fn saved_activations_are_only_overwritten_when_owned() {
        let (b, c, n) = (2, 3, 50);
        let x = FlexTensor::from_data(TensorData::new(
            (0..b * c * n)
                .map(|i| (i % 17) as f32 * 0.3 - 2.0)
                .collect::<Vec<f32>>(),
            [b, c, n],
        ));
        let labels = FlexTensor::from_data(TensorData::new(
            (0..b * n).map(|i| (i % c) as i64).collect::<Vec<i64>>(),
            [b, n],
        ));
        let mask = FlexTensor::from_data(TensorData::new(Vec::<f32>::new(), [0, 0]));
        let grad = FlexTensor::from_data(TensorData::new(
            (0..4 * b * c)
                .map(|i| i as f32 * 0.1 - 0.5)
                .collect::<Vec<f32>>(),
            [4, b, c],
        ));
        let spec = Spec {
            difference: true,
            ..Spec::plain(Activation::Softmax)
        };
        let plain = Flex::overlap_stats_labels(x.clone(), labels.clone(), mask.clone(), spec);
        let want = values(&Flex::overlap_stats_labels_backward(
            x.clone(),
            labels.clone(),
            mask.clone(),
            grad.clone(),
            spec,
        ));
        let (stats, saved) =
            Flex::overlap_stats_labels_saving(x.clone(), labels.clone(), mask.clone(), spec);
        assert_eq!(values(&stats), values(&plain));
        let probs = values(&saved);
        let held = saved.clone();
        let copied = Flex::overlap_stats_labels_backward_saved(
            saved,
            labels.clone(),
            mask.clone(),
            grad.clone(),
            spec,
        );
        assert_eq!(values(&copied), want);
        assert_eq!(
            values(&held),
            probs,
            "a shared buffer of activations was overwritten"
        );
        let in_place = Flex::overlap_stats_labels_backward_saved(held, labels, mask, grad, spec);
        assert_eq!(values(&in_place), want);
        // Without an activation the logits are what is saved, and they are never written.
        let (_, saved) = Flex::overlap_stats_labels_saving(
            x.clone(),
            FlexTensor::from_data(TensorData::new(vec![0i64; b * n], [b, n])),
            FlexTensor::from_data(TensorData::new(Vec::<f32>::new(), [0, 0])),
            Spec::plain(Activation::None),
        );
        assert_eq!(values(&saved), values(&x));
    }
}
