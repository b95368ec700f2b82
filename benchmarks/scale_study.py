"""The paper's findings at CPU scale: network size (width and depth), head depth, distillation, a memory of
negatives and Selective Kernels on Fashion-MNIST, every run through the package's own stages and its validation split.

    python benchmarks/scale_study.py --widths 0.25 0.5 1 --subsets 10/class 1% --seeds 0 1 2 --out runs/scale
    python benchmarks/scale_report.py --readme      # tables, paired differences and the plot from the JSONL

Parts (``--parts``, in this order): ``size`` pretrains each width for the same ``--pretrain-epochs``, chooses a
supervised and a fine-tuning recipe per width on validation (``--grid-labels``, seed ``--seeds[0]``, the same number
of candidates for both), then runs supervised only and fine-tuned from head layer 1 with the chosen recipes at every
subset and seed; ``distill`` self-distils each fine-tuned network (``--distill-epochs``); ``big-to-small``
self-distils the best fine-tuned network wider than 0.25 (chosen on validation: the width whose fine-tuning grid
scored best) and distils that into a width-0.25 student; ``head`` pretrains with ``--head-depths`` head layers at
``--head-width`` and fine-tunes from every layer; ``memory`` pretrains with a memory of ``--memory-size`` negatives;
``selective-kernels`` pretrains ``--head-width`` with Selective Kernels (``--sk-ratio``) and also trains that
encoder supervised only; ``pretraining-seeds`` fine-tunes each seed from its own pretraining (seed s from a
pretraining of seed s; ``--replicate`` adds Selective Kernels, the memory, the head depths, the longer
pretrainings or the deeper encoders); ``encoder-depth`` pretrains ``--head-width`` at each of ``--encoder-depths``
(ResNet depths) and runs each as ``size`` runs a width, with recipes chosen for it. ``head`` to ``pretraining-seeds``
use the size part's recipes for that width (a deeper encoder its own). Not run by default: ``distill-labels``
self-distils with the labelled term too (``--distill-alpha``), ``pretrain-epochs`` pretrains each width for
``--long-pretrain-epochs`` instead, and the recipe choices ``distill-recipes`` and ``temperature``. Elsewhere one
pretraining per configuration (seed 0) serves every seed downstream; seeds change the label subset, the classifier's
initialisation and the augmentations.

Finished runs are reused and interrupted ones resumed, so the command can be stopped and rerun; a recipe grid
whose candidates are all in ``--results`` already is read from there, not rerun. After every run the per-run
results (validation and test top-1 of each, never used to choose on test) are merged into ``--results`` (one
JSON object per line), the file that scale_report.py and the README read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scale_runs import Run, read_results, slug, write_results, write_rows

from simclrv2 import distill, finetune, load_config, pretrain, supervised
from simclrv2.config import Config
from simclrv2.logs import get_logger, setup_logging
from simclrv2.results import StageResult

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale_study.jsonl"
PARTS = ("size", "distill", "big-to-small", "head", "memory", "selective-kernels", "pretraining-seeds",
         "encoder-depth")
# recipe choices made with the study's pretraining: the shipped distillation recipe against two candidates, and
# pretraining's NT-Xent temperature; self-distillation with the labelled term (distill.alpha < 1); and a longer
# pretraining than --pretrain-epochs
EXTRA_PARTS = ("distill-recipes", "temperature", "distill-labels", "pretrain-epochs")

# Candidates per stage: the same number for both, centred on the shipped width-0.25 recipe (SGD, no scaling).
FINETUNE_GRID = {"sgd-0.003": 0.003, "sgd-0.01": 0.01, "sgd-0.03": 0.03}
SUPERVISED_GRID = {"sgd-0.03": 0.03, "sgd-0.1": 0.1, "sgd-0.3": 0.3}
# (optimiser, lr, distillation temperature): the shipped AdamW at the paper's τ 0.1, AdamW and SGD at τ 1
DISTILL_GRID = {"adamw-1e-3-t0.1": ("adamw", 1e-3, 0.1), "adamw-1e-3-t1": ("adamw", 1e-3, 1.0),
                "sgd-0.05-t1": ("sgd", 0.05, 1.0)}
# Self-distillation's length in epochs over all training images: the size table's; --distill-epochs adds others
DISTILL_EPOCHS = 2
# NT-Xent temperatures: the paper's 0.1, the demo's 0.2 and the package default 0.5
TEMPERATURE_GRID = (0.1, 0.2, 0.5)


STAGES: dict[str, Callable[..., StageResult]] = {
    "pretrain": pretrain, "finetune": finetune, "supervised": supervised, "distill": distill}


class Study:
    """Builds each run's config from the base config and runs it (or reads it when finished)."""

    def __init__(self, base: Config, args: argparse.Namespace) -> None:
        self.base, self.args, self.out = base, args, args.out
        self.done: dict[str, tuple[Run, StageResult]] = {}

    # -- running --------------------------------------------------------------------------------------------

    def run(self, run: Run) -> StageResult:
        run_dir = self.out / run.name
        finished = (run_dir / "result.json").exists()
        start = time.perf_counter()
        result = STAGES[run.stage](run.config, run_dir, resume=run_dir.exists())
        if not finished:
            (run_dir / "study.json").write_text(json.dumps({"wall_s": round(time.perf_counter() - start, 1)}))
            get_logger().info(f"study: {run.name} val {result.val_top1} test {result.test_top1}")
        self.done[run.name] = (run, result)
        write_results(self.done.values(), self.out, self.args.results)
        return result

    # -- configs --------------------------------------------------------------------------------------------

    def with_(self, config: Config, section: str, **values: Any) -> Config:
        return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})

    def pretraining(self, width: float, head_layers: int = 3, memory: int = 0,
                    temperature: float | None = None, sk_ratio: float = 0.0, seed: int = 0,
                    memory_momentum: float | None = None, epochs: int | None = None,
                    depth: int | None = None) -> Run:
        """A pretraining (seed 0 serves every part but ``pretraining-seeds``); ``temperature`` and the memory's
        ``memory_momentum`` other than the base config's, Selective Kernels (``sk_ratio`` > 0), ``epochs`` other
        than ``--pretrain-epochs`` and a ResNet ``depth`` other than the base config's name their own runs."""
        epochs = self.args.pretrain_epochs if epochs is None else epochs
        depth = self.base.model.depth if depth is None else depth
        c = self.with_(self.base, "model", width_multiplier=width, head_layers=head_layers, sk_ratio=sk_ratio,
                       depth=depth)
        c = self.with_(c, "pretrain", epochs=epochs, memory_size=memory)
        c = self.with_(c, "run", seed=seed)
        deeper = depth != self.base.model.depth
        name = "pretrain-" + (f"d{depth}-" if deeper else "") + f"w{width}-h{head_layers}"
        name += f"-mem{memory}" if memory else ""
        if temperature is not None and temperature != self.base.pretrain.temperature:
            c = self.with_(c, "pretrain", temperature=temperature)
            name += f"-t{temperature}"
        if epochs != self.args.pretrain_epochs:
            name += f"-e{epochs}"
        facts = {"width": width, "head_layers": head_layers, "memory": memory, "method": "pretraining",
                 "pretrain_epochs": epochs, "seed": seed,
                 "pretrain_temperature": c.pretrain.temperature}
        if memory and memory_momentum is not None and memory_momentum != self.base.pretrain.memory_momentum:
            c = self.with_(c, "pretrain", memory_momentum=memory_momentum)
            name += f"-m{memory_momentum:g}"
            facts["memory_momentum"] = memory_momentum  # recorded only where not the base config's, as sk_ratio
        if sk_ratio:  # recorded only where used, so the rows from before Selective Kernels were studied match
            name += f"-sk{sk_ratio:g}"
            facts["sk_ratio"] = sk_ratio
        if deeper:  # likewise: the rows from before depth was studied are the base config's depth
            facts["depth"] = depth
        return Run(name + f"-s{seed}", "pretrain", "", facts, c)

    def classifier_run(self, stage: str, part: str, pretrained: Run, labels: str, seed: int, recipe: str,
                       lr: float, head_layer: int = 1) -> Run:
        width, heads, memory = (pretrained.facts[k] for k in ("width", "head_layers", "memory"))
        c = self.with_(pretrained.config, "run", seed=seed)
        section = "finetune" if stage == "finetune" else "supervised"
        optimizer = dataclasses.replace(getattr(c, section).optimizer, base_lr=lr)
        c = self.with_(c, section, optimizer=optimizer)
        c = self.with_(c, "finetune", labels=labels, head_layer=head_layer, pretrained=str(self.out / pretrained.name))
        pretrain_seed = pretrained.facts["seed"]
        base = pretrained.name.removeprefix("pretrain-").removesuffix(f"-s{pretrain_seed}")
        base += f"-pre{pretrain_seed}" if pretrain_seed else ""
        layer = f"-layer{head_layer}" if stage == "finetune" else ""
        name = f"{stage}-{base}{layer}-{slug(labels)}-{recipe}-s{seed}"
        method = "fine-tuned" if stage == "finetune" else "supervised"
        facts = {"width": width, "head_layers": heads, "memory": memory, "method": method, "labels": labels,
                 "seed": seed, "recipe": recipe, "head_layer": head_layer,
                 "pretrain_epochs": pretrained.facts["pretrain_epochs"],
                 "pretrain_temperature": pretrained.facts["pretrain_temperature"]}
        for optional in ("sk_ratio", "memory_momentum", "depth"):
            if optional in pretrained.facts:
                facts[optional] = pretrained.facts[optional]
        if pretrain_seed:  # recorded only where not 0, as sk_ratio
            facts["pretrain_seed"] = pretrain_seed
        return Run(name, stage, part, facts, c)

    def distillation(self, part: str, teacher: Run, epochs: int, student: Run | None = None) -> Run:
        """Self-distillation of ``teacher`` (student None) or into ``student``'s pretrained network."""
        c = self.with_(teacher.config, "distill", teacher=str(self.out / teacher.name), epochs=epochs,
                       student="teacher" if student is None else "model",
                       student_pretrained=str(self.out / (student or self._pretraining_of(teacher)).name))
        facts = dict(teacher.facts, method="distilled", distill_epochs=epochs, teacher_width=teacher.facts["width"])
        name = f"distill-{teacher.name}-e{epochs}"
        if student is not None:
            c = self.with_(c, "model", width_multiplier=student.facts["width"],
                           head_layers=student.facts["head_layers"])
            facts.update(width=student.facts["width"], method="big-to-small")
            name += f"-to-w{student.facts['width']}"
        return Run(name, "distill", part, facts, c)

    def _pretraining_of(self, run: Run) -> Run:
        return self.pretraining(run.facts["width"], run.facts["head_layers"], run.facts["memory"],
                                depth=run.facts.get("depth"))

    # -- parts ----------------------------------------------------------------------------------------------

    def grid_scores(self, stage: str, pretrained: Run) -> dict[str, float]:
        """Validation top-1 (%) of each grid candidate at ``--grid-labels``, seed ``--seeds[0]``: read from
        ``--results`` when every candidate is recorded there, else run (with the pretraining first)."""
        grid = FINETUNE_GRID if stage == "finetune" else SUPERVISED_GRID
        runs = {recipe: self.classifier_run(stage, "recipe", pretrained, self.args.grid_labels, self.args.seeds[0],
                                            recipe, lr) for recipe, lr in grid.items()}
        recorded = read_results(self.args.results)
        if all(recorded.get(run.name, {}).get("val_top1") is not None for run in runs.values()):
            return {recipe: recorded[run.name]["val_top1"] for recipe, run in runs.items()}
        self.run(pretrained)
        return {recipe: 100 * (self.run(run).val_top1 or 0.0) for recipe, run in runs.items()}

    def choice_scores(self, stage: str, pretrained: Run) -> dict[str, float]:
        """The grid's validation scores the recorded choice was made on, else the grid's scores now."""
        self.chosen(stage, "size", pretrained)
        return read_results(self.args.results)[f"choice-{stage}-{pretrained.name}"]["scores"]

    def chosen(self, stage: str, part: str, pretrained: Run) -> tuple[str, float]:
        """The grid's best candidate on validation at ``--grid-labels``, seed ``--seeds[0]``, chosen once: the
        choice and the scores it was made on are recorded in ``--results`` (a "choice" line) and read from there
        afterwards, so a later rerun of a candidate (say, from a pretraining redone on another machine) cannot
        switch the recipe halfway through the seeds."""
        grid = FINETUNE_GRID if stage == "finetune" else SUPERVISED_GRID
        name = f"choice-{stage}-{pretrained.name}"
        recorded = read_results(self.args.results).get(name)
        if recorded is not None:
            return recorded["recipe"], grid[recorded["recipe"]]
        scores = self.grid_scores(stage, pretrained)
        best = max(scores, key=scores.get)
        get_logger().info(f"study: {stage} recipe for {pretrained.name}: {best} ({scores})")
        facts = {k: pretrained.facts[k] for k in ("width", "head_layers", "memory", "pretrain_temperature")}
        facts.update({k: pretrained.facts[k] for k in ("depth",) if k in pretrained.facts})
        choice = {"run": name, "part": "choice", "method": "choice", "stage": stage, **facts,
                  "labels": self.args.grid_labels, "seed": self.args.seeds[0], "recipe": best,
                  "val_top1": scores[best], "test_top1": None, "scores": scores}
        write_rows([choice], self.args.results)
        return best, grid[best]

    def fine_tuned(self, width: float, labels: str, seed: int) -> Run:
        """The size part's fine-tuned network (chosen recipe, head layer 1), run when not finished."""
        pretrained = self.pretraining(width)
        recipe, lr = self.chosen("finetune", "size", pretrained)
        self.run(pretrained)
        run = self.classifier_run("finetune", "size", pretrained, labels, seed, recipe, lr)
        self.run(run)
        return run

    def teacher_width(self) -> float:
        """The width above 0.25 whose fine-tuning grid reached the best validation top-1 (the paper's "best large
        teacher", chosen without test)."""
        wider = [w for w in self.args.widths if w > 0.25]
        if not wider:
            raise SystemExit("big-to-small needs a width above 0.25 in --widths")
        best = {w: max(self.choice_scores("finetune", self.pretraining(w)).values()) for w in wider}
        width = max(best, key=best.get)
        get_logger().info(f"study: big-to-small teacher width {width:g} (fine-tuning validation {best})")
        return width

    def size(self, supervised: bool = True) -> Iterator[tuple[float, Run]]:
        """Yields (width, fine-tuned run) for every width, subset and seed (the teachers of later parts);
        ``supervised`` False leaves out the supervised-only runs, which no later part needs."""
        for width in self.args.widths:
            for run in self.own_recipes(self.pretraining(width), "size", supervised):
                yield width, run

    def own_recipes(self, pretrained: Run, part: str, supervised: bool = True) -> list[Run]:
        """Chooses the supervised and fine-tuning recipes of ``pretrained``'s encoder on validation, then runs
        both at every subset and seed (fine-tuned from head layer 1); returns the fine-tuned runs."""
        self.run(pretrained)
        stages = ("supervised", "finetune") if supervised else ("finetune",)
        recipes = {stage: self.chosen(stage, part, pretrained) for stage in stages}
        fine_tuned = []
        for labels in self.args.subsets:
            for seed in self.args.seeds:
                for stage, (recipe, lr) in recipes.items():
                    run = self.classifier_run(stage, part, pretrained, labels, seed, recipe, lr)
                    self.run(run)
                    if stage == "finetune":
                        fine_tuned.append(run)
        return fine_tuned

    def encoder_depth(self) -> None:
        """The paper's other axis of size (ResNet-50 to 152): ``--head-width`` at each of ``--encoder-depths``,
        each deeper encoder run as the size part runs a width, with its own recipes chosen on validation from the
        same grids. The base config's depth is the size part's own runs."""
        for depth in self.args.encoder_depths:
            pretrained = self.pretraining(self.args.head_width, depth=depth)
            self.own_recipes(pretrained, "encoder-depth" if "depth" in pretrained.facts else "size")

    def run_all(self) -> None:
        parts = set(self.args.parts)
        teachers = list(self.size("size" in parts)) if parts & {"size", "distill"} else []
        if "distill" in parts:
            for _, teacher in teachers:
                for epochs in self.args.distill_epochs:
                    self.run(self.distillation("distill", teacher, epochs))
        later = {"big-to-small": self.big_to_small, "head": self.head_depth, "memory": self.memory,
                 "selective-kernels": self.selective_kernels, "pretraining-seeds": self.pretraining_seeds,
                 "encoder-depth": self.encoder_depth,
                 "distill-recipes": self.distill_recipes, "temperature": self.temperature,
                 "distill-labels": self.distill_labels, "pretrain-epochs": self.pretraining_length}
        for part, make in later.items():  # in this order
            if part in parts:
                make()

    def big_to_small(self) -> None:
        """The best large teacher, self-distilled first as the paper does, distilled into a width-0.25 student
        that starts from its own pretraining, at every subset and seed."""
        width, small, epochs = self.teacher_width(), self.pretraining(0.25), max(self.args.distill_epochs)
        self.run(small)
        for labels in self.args.subsets:
            for seed in self.args.seeds:
                self_distilled = self.distillation("distill", self.fine_tuned(width, labels, seed), epochs)
                self.run(self_distilled)
                self.run(self.distillation("big-to-small", self_distilled, epochs, small))

    def distill_recipes(self) -> None:
        """Self-distils the chosen fine-tuned network of each width (grid labels, seed 0) with each candidate."""
        for width in self.args.widths:
            pretrained = self.pretraining(width)
            self.run(pretrained)
            recipe, lr = self.chosen("finetune", "size", pretrained)
            teacher = self.classifier_run("finetune", "size", pretrained, self.args.grid_labels, self.args.seeds[0],
                                          recipe, lr)
            for name, (optimizer, lr, temperature) in DISTILL_GRID.items():
                run = self.distillation("distill-recipe", teacher, max(self.args.distill_epochs))
                opt = dataclasses.replace(run.config.distill.optimizer, name=optimizer, base_lr=lr)
                config = self.with_(run.config, "distill", optimizer=opt, temperature=temperature)
                self.run(Run(f"{run.name}-{name}", "distill", run.part, dict(run.facts, recipe=name), config))

    def distill_labels(self) -> None:
        """Self-distils each width's fine-tuned networks (the size part's, at every subset and seed) with the
        labelled term too, weighted ``1 - --distill-alpha``, on the teacher's own labelled subset: paired with the
        distill part's students of the same teachers (distillation only), it measures what the labels add."""
        alpha = self.args.distill_alpha
        for width in self.args.widths:
            for labels in self.args.subsets:
                for seed in self.args.seeds:
                    teacher = self.fine_tuned(width, labels, seed)
                    for epochs in self.args.distill_epochs:
                        run = self.distillation("distill-labels", teacher, epochs)
                        config = self.with_(run.config, "distill", alpha=alpha)
                        self.run(Run(f"{run.name}-a{alpha:g}", "distill", run.part,
                                     dict(run.facts, distill_alpha=alpha), config))

    def temperature(self) -> None:
        """Pretrains ``--head-width`` at each NT-Xent temperature and fine-tunes each with the fine-tuning recipe
        chosen at the base temperature, at ``--grid-labels`` and every seed: the choice is the best mean on
        validation (the pretraining is what varies, so the downstream recipe is held fixed)."""
        width = self.args.head_width
        base = self.pretraining(width)
        self.run(base)
        recipe, lr = self.chosen("finetune", "size", base)
        for temperature in TEMPERATURE_GRID:
            pretrained = self.pretraining(width, temperature=temperature)
            self.run(pretrained)
            part = "size" if pretrained.name == base.name else "temperature"  # the base runs are the size part's
            for seed in self.args.seeds:
                self.run(self.classifier_run("finetune", part, pretrained, self.args.grid_labels, seed, recipe, lr))

    def pretraining_length(self) -> None:
        """Pretrains each width for each of ``--long-pretrain-epochs`` and fine-tunes it (head layer 1) with the
        width's recipe, chosen at ``--pretrain-epochs``, at every subset and seed: paired with the size part's
        runs, it says whether the gain of pretraining, and its growth with width, change with a longer
        pretraining (the size findings name its length as their limit)."""
        for width in self.args.widths:
            for epochs in self.args.long_pretrain_epochs:
                self.fine_tune_variant("pretrain-epochs", self.pretraining(width, epochs=epochs))

    def head_depth(self, per_seed: bool = False) -> None:
        """Pretrains ``--head-width`` with each of ``--head-depths`` head layers and fine-tunes from every layer
        with the width's recorded recipe, at every subset and ``--head-seeds``: one pretraining per depth, or with
        ``per_seed`` (the pretraining-seeds part) seed s from a pretraining of seed s, seed 0's being this part's."""
        width = self.args.head_width
        recipe, lr = self.chosen("finetune", "size", self.pretraining(width))
        for heads in self.args.head_depths:
            for seed in self.args.head_seeds or self.args.seeds:
                pretrained = self.pretraining(width, heads, seed=seed if per_seed else 0)
                self.run(pretrained)
                part = "pretraining-seeds" if per_seed and seed else "head"
                for labels in self.args.subsets:
                    for layer in range(heads + 1):
                        self.run(self.classifier_run("finetune", part, pretrained, labels, seed, recipe, lr,
                                                     head_layer=layer))

    def memory(self) -> None:
        self.fine_tune_variant("memory", self.pretraining(self.args.head_width, memory=self.args.memory_size,
                                                          memory_momentum=self.args.memory_momentum))

    def selective_kernels(self) -> None:
        """Selective Kernels change the encoder, not only its pretraining: the supervised-only runs of the same
        encoder say how much of a gain is the architecture's own."""
        pretrained = self.pretraining(self.args.head_width, sk_ratio=self.args.sk_ratio)
        self.fine_tune_variant("selective-kernels", pretrained, stages=("finetune", "supervised"))

    def pretraining_seeds(self) -> None:
        """Every other part's seeds share one pretraining, so their spread leaves out the pretraining's own. Here
        seed s fine-tunes (chosen recipe, head layer 1) from a pretraining of seed s, at every width, subset and
        seed (``--replicate plain``), and with Selective Kernels (``selective-kernels``) or a memory of negatives
        (``memory``) at ``--head-width``; seed 0 is the size, Selective Kernels or memory part's run. ``head``
        does the head part the same way (every depth, fine-tuned from every layer), ``pretrain-epochs`` the longer
        pretrainings of that part (every width and ``--long-pretrain-epochs``), ``encoder-depth`` the deeper encoders
        of that part (with their own recipes). Paired with the size (or encoder-depth) part's supervised-only runs of
        the same seed (same label subset), or plain with the variant seed by seed, the claims are measured again with
        the spread between pretrainings in them."""
        for width in self.args.widths if "plain" in self.args.replicate else []:
            self.fine_tune_per_seed(width, "size")
        if "selective-kernels" in self.args.replicate:
            self.fine_tune_per_seed(self.args.head_width, "selective-kernels", sk_ratio=self.args.sk_ratio)
        if "memory" in self.args.replicate:
            self.fine_tune_per_seed(self.args.head_width, "memory", memory=self.args.memory_size)
        if "head" in self.args.replicate:
            self.head_depth(per_seed=True)
        for width in self.args.widths if "pretrain-epochs" in self.args.replicate else []:
            for epochs in self.args.long_pretrain_epochs:
                self.fine_tune_per_seed(width, "pretrain-epochs", epochs=epochs)
        for depth in self.args.encoder_depths if "encoder-depth" in self.args.replicate else []:
            if depth != self.base.model.depth:  # the base depth is --replicate plain's
                self.fine_tune_per_seed(self.args.head_width, "encoder-depth", depth=depth)

    def fine_tune_per_seed(self, width: float, seed_zero_part: str, sk_ratio: float = 0.0, memory: int = 0,
                           epochs: int | None = None, depth: int | None = None) -> None:
        """Seed s fine-tuned from a pretraining of seed s (``epochs`` long: default ``--pretrain-epochs``), with the
        width's recorded recipe (a deeper encoder's own); seed 0's runs are ``seed_zero_part``'s own, so they keep
        that part."""
        recipe, lr = self.chosen("finetune", "size", self.pretraining(width, depth=depth))
        for seed in self.args.seeds:
            pretrained = self.pretraining(width, memory=memory, sk_ratio=sk_ratio, seed=seed, epochs=epochs,
                                          depth=depth)
            self.run(pretrained)
            part = "pretraining-seeds" if seed else seed_zero_part
            for labels in self.args.subsets:
                self.run(self.classifier_run("finetune", part, pretrained, labels, seed, recipe, lr))

    def fine_tune_variant(self, part: str, pretrained: Run, stages: tuple[str, ...] = ("finetune",)) -> None:
        """A pretraining that differs from the size part's at its width in one setting, fine-tuned (head layer 1)
        with the recipe chosen for that width at every subset and seed: the pretraining is what varies, so the
        downstream recipe is held fixed, and the size part's runs are the pairs to compare with. ``stages`` may
        add the supervised-only runs of the same encoder, with the supervised recipe of that width."""
        plain = self.pretraining(pretrained.facts["width"])
        recipes = {stage: self.chosen(stage, "size", plain) for stage in stages}
        self.run(pretrained)
        for labels in self.args.subsets:
            for seed in self.args.seeds:
                for stage, (recipe, lr) in recipes.items():
                    self.run(self.classifier_run(stage, part, pretrained, labels, seed, recipe, lr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", default="demo", help="base config: a shipped name or a TOML path")
    parser.add_argument("--parts", nargs="+", choices=PARTS + EXTRA_PARTS, default=list(PARTS))
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--subsets", nargs="+", default=["10/class", "1%"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--long-pretrain-epochs", type=int, nargs="+", default=[5],
                        help="pretrain-epochs: the longer pretrainings, fine-tuned with the recipes chosen at "
                        "--pretrain-epochs")
    parser.add_argument("--grid-labels", default="1%", help="the label subset recipes are chosen on")
    parser.add_argument("--distill-epochs", type=int, nargs="+", default=[DISTILL_EPOCHS])
    parser.add_argument("--head-width", type=float, default=0.25)
    parser.add_argument("--head-seeds", type=int, nargs="+", help="the head part's seeds (default: --seeds)")
    parser.add_argument("--head-depths", type=int, nargs="+", default=[2, 3, 4], help="projection-head layers")
    parser.add_argument("--encoder-depths", type=int, nargs="+", default=[18, 50, 101],
                        help="encoder-depth: ResNet depths at --head-width")
    parser.add_argument("--memory-size", type=int, default=4096)
    parser.add_argument("--memory-momentum", type=float,
                        help="the memory's EMA momentum (default: the base config's pretrain.memory_momentum)")
    parser.add_argument("--distill-alpha", type=float, default=0.5,
                        help="distill-labels: the distillation term's weight (the labelled term weighs 1 - alpha)")
    parser.add_argument("--sk-ratio", type=float, default=0.0625, help="Selective Kernels' squeeze ratio (the paper's)")
    parser.add_argument("--replicate", nargs="+",
                        choices=("plain", "selective-kernels", "memory", "head", "pretrain-epochs", "encoder-depth"),
                        default=["plain"],
                        help="what the pretraining-seeds part pretrains once per seed")
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    setup_logging()
    base = load_config(args.config)
    base = dataclasses.replace(base, run=dataclasses.replace(base.run, progress=False))
    Study(base, args).run_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
