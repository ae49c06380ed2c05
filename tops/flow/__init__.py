"""The TOPS loop as a Prefect flow over the stage runners (tops.stages): tasks, run folder
bookkeeping and the pipeline. The stage code itself knows nothing of Prefect."""

from tops.flow.pipeline import plan, run, run_loop, tops_loop

__all__ = ["plan", "run", "run_loop", "tops_loop"]
