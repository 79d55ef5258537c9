#!/bin/bash
# build.sh SRCROOT OUTNAME isa
here=$(cd "$(dirname "$0")" && pwd); src=$1; out=$2; isa=${3:-avx512}
case $isa in
 avx512) T=(-DFM_ISA_TARGET="\"avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni\"" -DFM_ISA_AVX512);;
 avx2) T=(-DFM_ISA_TARGET="\"avx2,fma,f16c\"" -DFM_ISA_AVX2);;
 baseline) T=();;
esac
g++ -O3 -std=c++17 -I$src/csrc/core -c $here/readloop.cpp -o $out.readloop.o
g++ -O3 -std=c++17 $EXTRA -ffp-contract=off -fopenmp -DFM_ISA_NAMESPACE=$isa -DISA_NAME="\"$isa\"" "${T[@]}" -I$src/csrc/core $here/harness.cpp $out.readloop.o -o $out
