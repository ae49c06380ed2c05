"""The TOPS loop as a Prefect flow over the stage runners (tops/stages.py): tasks, run-folder
bookkeeping, the pipeline and deployments. All Prefect code lives in this folder; the library
(tops/) knows nothing of Prefect.

Imported as `tops.flows` (tops/flows is a link to this folder), so installing tops puts no
top-level package named `flows` on anyone's path.
"""
