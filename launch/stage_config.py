"""The `stages` section of a run config: a progressive run that trains the run's model up to a
step, grows it (`metastate expand`) into a larger model and goes on, in one out_dir.

    stages:
      - {until_step: 2000}                         # stage 1: the run's model (model.*)
      - {model: metastate-450m, freeze_old_steps: 200}   # grown at step 2000, trained to train.steps

A stage changes the model only: the data stream, the optimiser settings and the lr schedule (over
all of train.steps) are the run's, as if `metastate train ... train.stop_after`, `metastate
expand` and `metastate train` had been run by hand. launch/stages.py runs the stages.
"""

from collections.abc import Callable
from dataclasses import dataclass

# (one-line message, the dotted keys it is about)
StageProblem = tuple[str, tuple[str, ...]]


@dataclass
class StageConfig:
    model: str = ""                    # "" on the first stage (the run's model.*); later stages: a
                                       # model preset (metastate-450m) or a run config (preset name
                                       # or YAML) whose model section this stage grows into
    until_step: int = 0                # the stage ends after this optimizer step; 0 on the last
                                       # stage = train.steps
    freeze_old_steps: int = 0          # after growing: train only the new entries for this many steps
    seed: int = 0                      # init seed of the new entries (`metastate expand --seed`)


@dataclass(frozen=True)
class Stage:
    """One stage with its model and step range resolved."""
    number: int                        # 1-based
    model_source: str                  # "model.*" for the first stage, else the stage's `model`
    model: dict                        # the model section this stage trains
    start_step: int                    # the step the stage starts from (the previous stage's end)
    end_step: int
    freeze_old_steps: int
    seed: int

    def describe(self) -> str:
        """`stage 2: steps 4 -> 8, model metastate-tiny-wide (grown from stage 1)`."""
        grown = f" (grown from stage {self.number - 1}" if self.number > 1 else ""
        if grown and self.freeze_old_steps:
            grown += f", only new entries train for {self.freeze_old_steps} steps"
        return (f"stage {self.number}: steps {self.start_step} -> {self.end_step}, model "
                f"{self.model_source}{grown + ')' if grown else ''}")


def resolve_stages(stages: list, run_model: dict, steps: int,
                   stage_model: Callable[[str], dict]) -> list[Stage]:
    """The stages with their models and step ranges; [] for a run without stages. Assumes
    `stage_problems` found none. `stage_model(name)` is the model section a stage's name means."""
    resolved, start = [], 0
    for number, stage in enumerate(stages, start=1):
        end = stage.until_step or steps
        model = run_model if number == 1 else stage_model(stage.model)
        resolved.append(Stage(number, stage.model or "of the run (model.*)", model, start, end,
                              stage.freeze_old_steps, stage.seed))
        start = end
    return resolved


def stage_problems(stages: list, run_model: dict, steps: int, backend: str,
                   stage_model: Callable[[str], dict],
                   growth_problem: Callable[[dict, dict], str | None]) -> list[StageProblem]:
    """Every problem of the `stages` list: order of the steps, the first stage's model, models
    that cannot be grown into (`growth_problem(parent, target)` says why, or None)."""
    if not stages:
        return []
    if len(stages) == 1:
        return [("stages needs at least two entries (a first stage and one to grow into); remove "
                 "the section for a run without stages", ("stages",))]
    problems: list[StageProblem] = []
    previous_end, previous_model = 0, run_model
    for index, stage in enumerate(stages):
        key, last = f"stages[{index}]", index == len(stages) - 1
        end = stage.until_step or (steps if last else 0)
        if index == 0 and stage.model:
            problems.append((f"{key}.model must be unset: the first stage trains the run's model "
                             f"(model.*), got {stage.model!r}; set model.preset={stage.model} instead",
                             (f"{key}.model",)))
        if index > 0 and not stage.model:
            problems.append((f"{key}.model must name the model to grow into (a model preset such "
                             f"as metastate-450m, or a run config)", (f"{key}.model",)))
        if not last and stage.until_step <= 0:
            problems.append((f"{key}.until_step must be set (>= 1) on every stage but the last",
                             (f"{key}.until_step",)))
        elif stage.until_step < 0 or end <= previous_end or end > steps:
            problems.append((f"{key}.until_step must be after the previous stage's end "
                             f"({previous_end}) and at most train.steps ({steps}), got "
                             f"{stage.until_step}", (f"{key}.until_step", "train.steps")))
        if last and stage.until_step not in (0, steps):
            problems.append((f"{key}.until_step of the last stage must be 0 or train.steps "
                             f"({steps}), got {stage.until_step}: the run ends with its last stage",
                             (f"{key}.until_step", "train.steps")))
        if stage.freeze_old_steps < 0 or (index == 0 and stage.freeze_old_steps):
            problems.append((f"{key}.freeze_old_steps must be >= 0, and 0 on the first stage "
                             f"(nothing is old yet), got {stage.freeze_old_steps}",
                             (f"{key}.freeze_old_steps",)))
        if stage.freeze_old_steps > 0 and backend != "none":
            problems.append((f"{key}.freeze_old_steps needs parallel.backend=none (single process "
                             f"or DDP), got {backend}", (f"{key}.freeze_old_steps", "parallel.backend")))
        if index > 0 and stage.model:
            try:
                model = stage_model(stage.model)
            except ValueError as err:
                problems.append((f"{key}.model: {err}", (f"{key}.model",)))
                continue
            reason = growth_problem(previous_model, model)
            if reason is not None:
                problems.append((f"{key}.model={stage.model} cannot grow from stage {index}'s "
                                 f"model: {reason}", (f"{key}.model",)))
            previous_model = model
        previous_end = max(previous_end, end)
    return problems
