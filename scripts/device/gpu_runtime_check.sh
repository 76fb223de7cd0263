#!/usr/bin/env bash
# GPU check for issue #6 on a lent GPU machine (CUDA 13 libraries from its PyTorch
# 2.11 install, no TensorRT, no onnxruntime-gpu). The onnxruntime-gpu 1.31.1 wheel's
# libraries (`make deps-ort-gpu`) exceed one transfer, so they arrive in parts:
#   $PARTS/cuda.xz.*            libonnxruntime_providers_cuda.so, xz, split in 62 MB
#                               parts, each carried by its own call and copied to
#                               $PARTS (default /tmp/parts)
#   devcarry/run/               libonnxruntime.so.1.31.1.xz, providers_shared,
#                               providers_tensorrt, sen and sen-export (release,
#                               stripped), the CLIP vocabulary, ckpt/ (the demo's
#                               best checkpoint, model.safetensors.xz + config.json)
# Reports: `sen info` with a real GPU, CPU vs CUDA eval on the demo's fp32 and fp16
# bundles, index + search on CUDA against CPU, the TensorRT fail-fast message, and
# the CUDA provider with cuDNN hidden.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
R=$PWD/devcarry/run
TORCH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
NV=$(dirname "$TORCH")/nvidia
export LD_LIBRARY_PATH=$TORCH/lib:$(ls -d "$NV"/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
export SEN_CLIP_VOCAB=$R/bpe_simple_vocab_16e6.txt.gz
export SEN_CACHE=/tmp/sencache
unxz() { python3 -c 'import lzma,sys,shutil; shutil.copyfileobj(lzma.LZMAFile(sys.stdin.buffer), sys.stdout.buffer)'; }
mkdir -p /tmp/ortgpu /tmp/ckpt
cp $R/libonnxruntime_providers_*.so /tmp/ortgpu/
unxz < $R/libonnxruntime.so.1.31.1.xz > /tmp/ortgpu/libonnxruntime.so.1.31.1
# Parts were copied to $PARTS by earlier calls (one transfer each; /tmp survives between calls).
cat ${PARTS:-/tmp/parts}/cuda.xz.* | unxz > /tmp/ortgpu/libonnxruntime_providers_cuda.so
unxz < $R/ckpt/model.safetensors.xz > /tmp/ckpt/model.safetensors
cp $R/ckpt/config.json /tmp/ckpt/
chmod +x $R/sen $R/sen-export
S="$R/sen --ort-lib /tmp/ortgpu/libonnxruntime.so.1.31.1"
{
  nvidia-smi -L
  sha256sum /tmp/ortgpu/* /tmp/ckpt/*
  $R/sen synth --out $R/synth > /dev/null
  $R/sen-export --checkpoint /tmp/ckpt --out $R/bundle-fp32
  $R/sen-export --checkpoint /tmp/ckpt --out $R/bundle-fp16 --fp16
  echo "== sen info (GPU build of ONNX Runtime, a real GPU, no TensorRT)"
  $S info $R/bundle-fp32
  for b in fp32 fp16; do
    for p in cpu cuda; do
      echo "== eval $b on $p"
      RUST_LOG=ort=trace,sen=info /usr/bin/time -f "%e s wall" $S eval $R/bundle-$b --dataset $R/synth --provider $p --json \
        2> >(tee /tmp/eval-$b-$p.log | grep -E "placed on|Node placements|Number of nodes|ERROR|WARN|sen::|wall" >&2) \
        || { echo "-- retry with --allow-fallback"; RUST_LOG=info $S eval $R/bundle-$b --dataset $R/synth --provider $p --json --allow-fallback; }
    done
  done
  grep -h -A12 "Node placements\|placed on" /tmp/eval-*-cuda.log | head -80
  echo "== index + search on cuda vs cpu (fp32 bundle)"
  $S index $R/bundle-fp32 --dataset $R/synth --out /tmp/g-cuda.senidx --provider cuda
  $S index $R/bundle-fp32 --dataset $R/synth --out /tmp/g-cpu.senidx --provider cpu
  q="a woman in a red coat with black trousers and a white backpack"
  $S search $R/bundle-fp32 /tmp/g-cuda.senidx "$q" -k 5 --provider cuda --json
  $S search $R/bundle-fp32 /tmp/g-cpu.senidx "$q" -k 5 --provider cpu --json
  echo "== tensorrt: must fail fast naming libnvinfer.so.10"
  /usr/bin/time -f "%e s wall" $S eval $R/bundle-fp16 --dataset $R/synth --provider tensorrt
  echo "== cuda with cuDNN hidden: must fail fast naming libcudnn.so.9"
  (export LD_LIBRARY_PATH=$(echo "$LD_LIBRARY_PATH" | tr ':' '\n' | grep -v cudnn | paste -sd:); $S search $R/bundle-fp32 /tmp/g-cuda.senidx "$q" --provider cuda)
  nvidia-smi --query-gpu=name,memory.used --format=csv
} 2>&1 | tee "$OUT/gpu_runtime.log"
