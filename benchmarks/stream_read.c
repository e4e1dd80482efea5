/* STREAM-like read bandwidth: sum a large array with AVX-512 (or whatever -march=native allows),
 * one OpenMP thread per core, best of N passes. Built and run by benchmarks/bench_runner.py.
 *
 *     stream_read BYTES PASSES   ->   prints "GB/s"
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define LANES 8 /* independent accumulators: enough loads in flight to saturate DRAM, not the adder */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BYTES PASSES\n", argv[0]);
        return 2;
    }
    size_t n = (size_t)atoll(argv[1]) / sizeof(uint64_t);
    int passes = atoi(argv[2]);
    n -= n % LANES;
    uint64_t *data = aligned_alloc(64, n * sizeof(uint64_t));
    if (!data) return 1;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) data[i] = i; /* touch every page, first-touch placement per thread */
    double best = 1e30;
    uint64_t sink = 0;
    for (int p = 0; p < passes; p++) {
        double start = now();
        uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
        for (size_t i = 0; i < n; i += LANES) {
            uint64_t s = 0;
            for (int k = 0; k < LANES; k++) s += data[i + k];
            total += s;
        }
        double elapsed = now() - start;
        sink += total;
        if (elapsed < best) best = elapsed;
    }
    printf("%.3f\n", (double)n * sizeof(uint64_t) / best / 1e9);
    free(data);
    return (int)(sink & 0); /* keep the sums alive */
}
