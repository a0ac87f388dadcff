#!/usr/bin/env bash
# Fetch into .whl/ the wheels glyphgen needs on the lent GPU machine (no internet there).
# Run here, from the repo root, where PyPI is reachable. Then carry `.whl` in each device call.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

# Only what the GPU image (python 3.12, see .library/device/KINDS.md) lacks. torch, lightning, numpy,
# pillow, onnxruntime, opencv-python-headless, pyyaml, regex, msgpack, six, tqdm, fonttools... are there.
# omegaconf >= 2.4 vendors its ANTLR runtime, so antlr4-python3-runtime is not needed.
# rapidocr asks for opencv-python; the image's opencv-python-headless provides the same cv2.
PKGS=(
  webdataset braceexpand
  omegaconf
  rapidocr-onnxruntime pyclipper shapely
  wordfreq ftfy langcodes locate wcwidth
  font-source-serif-pro font-source-sans-pro font-lato font-amatic-sc font-intuitive font-fredoka-one
  font-caladea font-manrope font-hanken-grotesk font-rhd font-fjallaone font-roboto
)
LIMIT=$((60 * 1024 * 1024))  # the device carries 64 MiB per call, repo included
VENV_PY=.venv/bin/python     # pins come from here so the GPU runs the code the CPU tests ran

mkdir -p .whl
for name in "${PKGS[@]}"; do
  ver=$("$VENV_PY" -c 'import sys, importlib.metadata as m; print(m.version(sys.argv[1]))' "$name") \
    || { echo "ERROR: $name is not installed in $VENV_PY" >&2; exit 1; }
  stem=$(echo "$name" | tr 'A-Z-' 'a-z_')  # wheel file names normalise '-' to '_'
  # Two versions of one package make the device's pip install fail: drop stale ones.
  for f in .whl/*.whl; do
    [ -e "$f" ] || continue
    b=$(basename "$f" | tr 'A-Z' 'a-z')
    if [[ $b == "$stem"-* && $b != "$stem-$ver"-* ]]; then echo "removing stale $f"; rm -f "$f"; fi
  done
  if compgen -G ".whl/$stem-$ver-*.whl" >/dev/null || compgen -G ".whl/${stem^}-$ver-*.whl" >/dev/null; then
    continue  # already fetched
  fi
  echo "fetching $name==$ver"
  # README's tag set; pip matches each manylinux_2_N exactly, so list the common ones.
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -d .whl "$name==$ver" 2> >(grep -v 'is ignored: it is neither' >&2); then
    # sdist-only packages: build here, but only accept a pure-python wheel (a compiled one would be cp311).
    echo "no wheel on PyPI for $name==$ver: building one"
    python3 -m pip wheel -q --no-deps -w .whl "$name==$ver"
    compgen -G ".whl/$stem-$ver-py*-none-any.whl" >/dev/null \
      || { echo "ERROR: $name==$ver did not build as a pure-python wheel" >&2; exit 1; }
  fi
done

# wordfreq's wheel is ~57 MB of word lists for 40+ languages; glyphgen only reads English
# (top_n_list("en", ...)), so drop the rest to fit the 64 MiB carry. Code and English data are untouched.
python3 - .whl/wordfreq-*.whl <<'PY'
import base64, hashlib, re, sys, zipfile
path = sys.argv[1]
src = zipfile.ZipFile(path)
drop = [n for n in src.namelist() if re.match(r"wordfreq/data/", n) and not n.endswith("_en.msgpack.gz")]
if drop:
    items = [(i, src.read(i)) for i in src.infolist() if i.filename not in drop and not i.filename.endswith("/RECORD")]
    record = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
    src.close()
    h = lambda b: "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
    lines = [f"{i.filename},{h(b)},{len(b)}" for i, b in items] + [f"{record},,"]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for i, b in items:
            out.writestr(i, b)
        out.writestr(record, "\n".join(lines) + "\n")
    print(f"trimmed {path}: dropped {len(drop)} non-English data files")
PY

# Anything else in .whl/ would also be installed on the device: say so.
for f in .whl/*.whl; do
  b=$(basename "$f" | tr 'A-Z' 'a-z'); known=0
  for name in "${PKGS[@]}"; do [[ $b == "$(echo "$name" | tr 'A-Z-' 'a-z_')"-* ]] && known=1; done
  [ $known = 1 ] || echo "WARNING: $f is not glyphgen's; it will be installed on the device too" >&2
done

echo; ls -l .whl/*.whl | awk '{printf "%10d  %s\n", $5, $9}'
total=$(cat .whl/*.whl | wc -c)
echo "total: $total bytes ($((total / 1024)) KiB) in $(ls .whl/*.whl | wc -l) wheels"
if [ "$total" -gt "$LIMIT" ]; then echo "ERROR: .whl/ exceeds 60 MiB" >&2; exit 1; fi

echo
echo "Device call: carry [\".whl\"], and start the command with:"
# shellcheck disable=SC2016  # $PWD must expand on the device, not here
echo 'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;'
echo "then: python3 -m glyphgen.cli ..."
