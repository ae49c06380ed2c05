"""The TOPS loop as a Prefect flow over the stage runners (tops/stages/): tasks, run-folder
bookkeeping, the pipeline and deployments. All Prefect code lives in this package; the rest of
the library knows nothing of Prefect. The deployable flow files in the top-level `flows/` folder
(named by prefect.yaml and the README) are a few lines importing from here.
"""
