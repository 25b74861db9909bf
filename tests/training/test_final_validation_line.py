"""`metastate train`'s closing line says which tokens its validation loss covers (issue 15): the
periodic check's windows, not the longer stretch `metastate eval` scores."""

from launch.run_config import load_run_config
from training.validation import final_validation_line


def test_the_line_counts_the_periodic_windows_over_all_data_parallel_ranks():
    cfg = load_run_config("demo", ["train.micro_batch_size=4", "train.eval_batches=3"])
    line = final_validation_line(6.12345, 150, cfg, data_parallel_ranks=2)
    # 3 batches x 4 sequences x 2 ranks x 128 tokens
    assert line == ("final validation loss: 6.1235 at step 150 (periodic check: the first 3,072 "
                    "tokens of the val split; `metastate eval runs/demo --split val` scores "
                    "eval.max_tokens=65,536, a different number)")


def test_an_unbounded_eval_is_called_the_whole_split():
    cfg = load_run_config("smoke", ["eval.max_tokens=0"])
    assert "scores the whole split, a different number" in final_validation_line(7.0, 20, cfg, 1)
