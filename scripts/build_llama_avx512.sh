#!/usr/bin/env bash
# llama.cpp's libraries built a second time, for CPUs with AVX-512 VNNI and BF16, from the source of the
# llama-cpp-python installed in the virtual environment (so their C interface is the one its bindings expect),
# into $VENV/llama-cpp-avx512. The first build (the Makefile's LLAMA_CMAKE) is AVX2 only, so that it runs on any
# machine; marsrm loads this one instead only where /proc/cpuinfo lists every instruction it is compiled for
# (`marsrm.llamacpp.avx512_unavailable`), so a virtual environment holding both still runs on AVX2-only machines.
#
# Skipped on a CPU that could not run it (set MARSRM_BUILD_AVX512=1 to build it anyway) and when the build for
# the installed version is there already. About 4 minutes on 2 cores.
set -euo pipefail
venv=${VENV:-.venv}
target="$venv/llama-cpp-avx512"
# the compiler's side of marsrm.llamacpp.AVX512_BF16_FLAGS, the CPU flags that must all be present to load it
cmake_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
             -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON)

version=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')
if [ -f "$target/VERSION" ] && [ "$(cat "$target/VERSION")" = "$version" ]; then
    exit 0
fi
if [ "${MARSRM_BUILD_AVX512:-0}" != 1 ]; then
    missing=$("$venv/bin/python" -c 'from marsrm.llamacpp import AVX512_BF16_FLAGS as need, cpu_flags
print(" ".join(f for f in need if f not in cpu_flags()))')
    if [ -n "$missing" ]; then
        echo "note: this CPU lacks $missing: llama.cpp's AVX-512 BF16 build skipped (the portable one serves)"
        exit 0
    fi
fi
cmake=cmake
command -v cmake >/dev/null || { "$venv/bin/pip" install -q cmake && cmake="$venv/bin/cmake"; }

work=$(mktemp -d)
trap 'rm -rf "$work" "$target.partial"' EXIT
"$venv/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
source_dir=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
"$cmake" -S "$source_dir" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DCMAKE_INSTALL_RPATH='$ORIGIN' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON "${cmake_flags[@]}" \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_CURL=OFF >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; exit 1; }
"$cmake" --build "$work/build" --target llama -j "$(nproc)" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
mkdir -p "$target.partial"
cp -P "$work"/build/bin/lib*.so* "$target.partial"/
echo "$version" >"$target.partial/VERSION"
rm -rf "$target"
mv "$target.partial" "$target"  # whole or not at all: a killed build leaves no half folder to load
echo "llama.cpp $version built for AVX-512 BF16 in $target"
