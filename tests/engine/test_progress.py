"""TrainProgress: what a checkpoint records of it, and progress saved before ``total_steps`` existed."""

from rwkvtune.engine.checkpoint import TrainProgress


def test_total_steps_is_left_out_of_checkpoints_and_older_progress_loads():
    progress = TrainProgress(step=3, epoch=1, window=2, total_steps=10)
    assert progress.saved() == {"step": 3, "epoch": 1, "window": 2}
    loaded = TrainProgress(**progress.saved())  # as load_checkpoint reads an older or a newer checkpoint
    assert (loaded.step, loaded.epoch, loaded.window, loaded.total_steps) == (3, 1, 2, 0)  # fit sets the total
