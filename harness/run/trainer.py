"""The training loop: evaluation every ``train.eval_every`` steps, the best-validation weights kept and
tested once at the end, for the run's budget (``train.budget``: steps, seconds of training, or training
FLOPs; ``attnbench.harness.run.budget``) and within its time limit (``train.time_limit_min``).

``Trainer`` is ``TrainerSteps`` (``harness.run.trainer_steps``: the state and one training step) with
evaluation and ``fit``. Every run counts the FLOPs of one training step once, before its first step and
outside its timing (``count_step_flops``), so that its curve (``curve.csv``) carries, beside each
evaluation's step and wall time, the training-step time and the FLOPs of training so far. What the loop
prints is ``harness.run.progress.Log``'s.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from attnbench.harness.core import watchdog
from attnbench.harness.results.records import RunKey
from attnbench.harness.run import checkpoint, precision
from attnbench.harness.run.progress import Log
from attnbench.harness.run.trainer_steps import TrainerSteps
from attnbench.variants.lib.kernels import KernelLog

#: seconds past ``train.time_limit_min`` after which a step still running is interrupted (``Trainer.fit``): one
#: of usual length ends sooner, is counted, and the limit stops the run after it
LIMIT_SLACK_S = 2.0


class Diverged(Exception):
    """A non-finite training loss: the run ends with status ``diverged``."""


class TimeLimit(Exception):
    """``train.time_limit_min`` stopped the run with steps left: status ``timeout``."""


class Trainer(TrainerSteps):
    """Trains the model of one run on its labels. A subclass changes what is trained or how the
    loss is computed by overriding ``build_model`` and ``loss`` (``TrainerSteps``); the loop, evaluation,
    checkpointing and every outcome (ok, oom, diverged, timeout, failed) stay here.

    The steady-state loop never reads a device tensor: the training losses stay on the device
    until the next evaluation (where a non-finite one ends the run as diverged, at the step it
    first appeared), the step timer reads CUDA events lazily, and whether a batch is padded is
    known from host-side flags. So on a GPU the host runs ahead and queues the next steps while
    the device works."""

    #: the test split's confusion counts (rows: true class, columns: predicted) from ``test``; None before it,
    #: or when it tested nothing
    test_confusion: list[list[int]] | None = None

    @torch.no_grad()
    def evaluate(self, split_name: str, confusion: torch.Tensor | None = None) -> tuple[float, float]:
        """(accuracy, mean loss) on a split; the sums stay on the device until the end. ``confusion``: a flat
        long tensor of num_classes² counts on the device, into which each (true, predicted) pair is also counted,
        at ``true * num_classes + predicted`` (only the test pass asks: ``test``)."""
        self.model.eval()
        split, bs = self.splits[split_name], self.cfg.eval_batch_size
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(0, split.n, bs):
            x, y, padded = split.slice(i, i + bs)
            logits = self.eval_forward(x, padded)
            self.eval_tokens += x.numel()
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            predicted = logits.argmax(-1)
            correct += (predicted == y).sum()
            if confusion is not None:
                confusion += torch.bincount(y * self.data.num_classes + predicted, minlength=confusion.numel())
        self.model.train()
        return correct.item() / split.n, loss_sum.item() / split.n

    def eval_forward(self, x: torch.Tensor, padded: bool) -> torch.Tensor:
        """The model's output on an evaluation batch, timed (``eval_timer``) under the run's precision; the first
        evaluation pass notes the attention kernel it ran (``eval_attention_kernel``; a compiled model's from an
        uncompiled forward, ``kernel_probe``)."""
        if self.eval_attention_kernel is None and self.compiled:
            self.eval_attention_kernel = self.kernel_probe(x, padded)
        noting = KernelLog() if self.eval_attention_kernel is None else contextlib.nullcontext()
        with noting, self.eval_timer.time(), precision.autocast(self.precision, self.device):
            out = self.model(x, padded)
        if isinstance(noting, KernelLog):  # the kernel was not known before this pass
            self.eval_attention_kernel = noting.as_record()
        return out

    def finite_losses(self, last_step: int) -> list[float]:
        """The training losses since the last evaluation (those of the steps up to ``last_step``),
        read from the device at once; raises Diverged at the first non-finite one, naming its step."""
        if not self.losses:
            return []
        values = torch.stack([torch.as_tensor(v, device=self.device) for v in self.losses]).float().cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            first = int(bad[0, 0])
            self.step = last_step - len(values) + 1 + first
            raise Diverged(f"non-finite training loss {values[first].item()} at step {self.step}")
        return values.tolist()

    def budget_spent(self) -> bool:
        """Whether a seconds budget is spent: the clock's estimate says so, and its exact time (on CUDA read only
        then: the budget's only synchronisations, near its end) agrees."""
        limit = self.budget.limit
        return self.budget.kind == "seconds" and self.clock.estimate() >= limit and self.clock.exact() >= limit

    def fit(self, log: Log) -> int:
        """Train (from ``self.step``, later than 0 when resumed); returns the number of steps
        done. Raises Diverged / TimeLimit.

        First the FLOPs of a step are counted (``count_step_flops``; a resumed run has them from its checkpoint)
        and the steps planned follow from the budget (``Budget.steps``). A seconds budget is checked after each
        step (``budget_spent``): the step that spends it is the last, evaluated, and the run ends ok.

        ``train.time_limit_min`` stops a run with steps left to do: one that finished them all is ok, however
        long its last evaluation took. It is checked after each step, and a watchdog (``core.watchdog``) interrupts
        a forward or backward pass, or an evaluation, still running ``LIMIT_SLACK_S`` after it (a step that never
        returns): that step or evaluation is not counted. A step's update of the weights is never interrupted, so
        they stay those of the last step done. The steps since the last evaluation are evaluated after the limit,
        and the test pass is outside it (it runs the forward passes that the evaluations within the limit ran)."""
        if self.flops_method is None:
            self.count_step_flops()
        self.cfg = cfg = dataclasses.replace(self.cfg, steps=self.budget.steps(self.cfg.steps, self.flops_per_step))
        log.total(cfg.steps)
        t0 = time.perf_counter() - self.elapsed_s
        limit_s = cfg.time_limit_min * 60
        spent = False
        self.model.train()
        batches = self.batches()
        if self.step:
            log.step(self.step)  # resumed
        finished = self.step  # the last step whose loss is in self.losses (or was evaluated)
        with watchdog.Deadline(max(0.0, limit_s - self.elapsed_s) + LIMIT_SLACK_S if limit_s else None,
                               f"training {RunKey.of(self.run).run_id} (train.time_limit_min {cfg.time_limit_min:g}, "
                               f"plus {LIMIT_SLACK_S:g} s)") as limit:
            try:
                for step in range(self.step + 1, cfg.steps + 1):
                    self.step = step
                    x, y, padded = next(batches)
                    with watchdog.uninterrupted():  # the step is done whole, or not at all (``train_step``)
                        started = time.perf_counter()
                        self.losses.append(self.next_step()(x, y, padded))
                        self.clock.add_host(time.perf_counter() - started)
                        finished = step
                    log.step()
                    if step % cfg.eval_every == 0 or step == cfg.steps:
                        self.record_eval(step, time.perf_counter() - t0, log)
                    spent = self.budget_spent()
                    if spent:  # evaluated below, if not above
                        break
                    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps
                            and self.checkpoint_path is not None):
                        checkpoint.save(self.checkpoint_path, self, key=self.checkpoint_key,
                                        losses=self.finite_losses(step), elapsed_s=time.perf_counter() - t0)
                    if step < cfg.steps and limit_s and (limit.fired or time.perf_counter() - t0 > limit_s):
                        break
            except Diverged:
                raise
            except Exception:  # a step that failed on a model that had already diverged: say diverged
                self.finite_losses(finished)
                raise
        self.step = finished
        if self.losses:  # the steps since the last evaluation (a step is evaluated once)
            self.record_eval(finished, time.perf_counter() - t0, log)
        if finished < cfg.steps and not spent:
            raise TimeLimit(f"time limit of {cfg.time_limit_min} min reached at step {finished} of {cfg.steps}"
                            + (" (the step or evaluation under way was interrupted and is not counted)"
                               if limit.expired else ""))
        return finished

    def record_eval(self, step: int, elapsed: float, log: Log) -> None:
        losses = self.finite_losses(step)
        val_acc, val_loss = self.evaluate("val")
        self.losses = []  # after the evaluation: one the time limit interrupts is done again after it
        row = {"step": step, "lr": self.sched.get_last_lr()[0], "train_loss": float(np.mean(losses)),
               "val_loss": val_loss, "val_acc": val_acc, "elapsed_s": round(elapsed, 3),
               "train_s": round(self.clock.exact(), 6),
               "train_flops": step * self.flops_per_step if self.flops_per_step is not None else None}
        self.curve.append(row)
        if val_acc > self.best["val_acc"]:
            self.best = {"val_acc": val_acc, "step": step,
                         "state": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}}
        log.step(0, train_loss=f"{row['train_loss']:.3f}", val_acc=f"{val_acc:.3f}")
        log.line(f"step {step}/{self.cfg.steps}  train_loss {row['train_loss']:.4f}  "
                 f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  best {self.best['val_acc']:.4f}@{self.best['step']}")

    def test(self, status: str) -> float | None:
        """Test accuracy of the weights ``train.test_checkpoint`` names (the final ones only after a run
        that did not diverge), measured once; ``self.tested`` says which were tested and ``self.test_confusion``
        holds the test split's confusion counts."""
        if self.cfg.test_checkpoint == "final" and status != "diverged" and self.step > 0:
            self.tested = "final"
        elif self.best["state"] is None:
            return None
        else:
            self.tested = "best"
            self.model.load_state_dict(self.best["state"])
        classes = self.data.num_classes
        counts = torch.zeros(classes * classes, dtype=torch.long, device=self.device)
        accuracy = self.evaluate("test", counts)[0]
        self.test_confusion = counts.view(classes, classes).tolist()  # read once, after the pass
        return accuracy
