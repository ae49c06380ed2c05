#!/usr/bin/env bash
# One call on a lent GPU machine (see BENCHMARKS.md): training throughput at the defaults
# (bench/train_sft.py --gpu, issue 19) and the smoke flow's GPU memory stage by stage
# (bench/gpu_flow_memory.py, issue 16). Needs the wheels in .whl/ (fetch-wheels.sh plus prefect's
# closure); writes its figures and logs under $OUT.
# Before the call, here (60 MB in .whl/, under the 64 MiB a call carries): the training wheels plus
# what a flow run needs that the GPU image lacks (Prefect's closure and math-verify), each at
# this checkout's .venv version (a newer fastapi than the .venv's broke Prefect's server there):
#   bash bench/gpu_check.sh --fetch
# Then one device call with carry [".whl"]: `bash bench/gpu_check.sh` (timeout_s 590; 2026-12-04: 360 s and 485 s).
set -u
FLOW_WHEELS="aiosqlite alembic amplitude-analytics annotated-doc antlr4-python3-runtime anyio  \
  apprise asgi-lifespan asyncpg attrs beartype burner-redis cachetools certifi cffi click  \
  cloudpickle coolname cronsim cryptography cyclopts dateparser docker docstring-parser  \
  exceptiongroup fastapi graphviz greenlet griffe griffecli griffelib h11 h2 hpack httpcore  \
  httpcore2 httpx httpx2 humanize hyperframe idna jinja2 jinja2-humanize-extension jsonpatch  \
  jsonpointer jsonschema jsonschema-specifications latex2sympy2-extended mako markdown-it-py  \
  math-verify mdurl oauthlib opentelemetry-api orjson packaging pathspec pendulum pluggy  \
  prefect prometheus-client py-key-value-aio pycparser pydantic-extra-types pydantic-settings  \
  pydocket python-dateutil python-dotenv python-json-logger python-slugify pytz readchar redis  \
  referencing requests-oauthlib rfc3339-validator rich rich-rst rpds-py ruamel-yaml  \
  ruamel-yaml-clib semver shellingham sniffio sqlalchemy starlette text-unidecode toml  \
  truststore typer typing-extensions tzdata tzlocal uncalled-for uvicorn websockets"
if [ "${1:-}" = "--fetch" ]; then
  # fetch-wheels.sh pins each wheel to the .venv's version and takes the newest without one, which
  # once paired transformers 5.25 with an older huggingface-hub and failed at import on the GPU.
  [ -x "$(git rev-parse --show-toplevel)/.venv/bin/pip" ] || { echo "gpu_check.sh --fetch: no .venv here; run make setup first" >&2; exit 2; }
  exec bash "$(git rev-parse --show-toplevel)/../shared/device/fetch-wheels.sh" $FLOW_WHEELS
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/tops-gpu-check}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import prefect, trl, datasets, math_verify, torch, tops.cli; print('imports ok: prefect', prefect.__version__, 'trl', trl.__version__, 'torch', torch.__version__)"
timeout "${FLOW_S:-360}" python3 bench/gpu_flow_memory.py --out "$OUT/flow_memory.json" > "$OUT/flow.log" 2>&1
echo "flow rc=$?"; grep -v 'it/s\]' "$OUT/flow.log" | tail -45
timeout "${TRAIN_S:-170}" python3 bench/train_sft.py --gpu --contenders "${CONTENDERS:-plain,tops}" --out "$OUT/train_sft_gpu.json" > "$OUT/train_sft.log" 2>&1
echo "train_sft rc=$?"; grep -v 'it/s\]' "$OUT/train_sft.log" | grep -E 'tok/s|x$|GiB|failed'
