// Test kernel for the CUDA layer's own tests (not a product kernel): out[i] = a * x[i] + y[i] for i < n.
// Regenerate the PTX beside it with: nvcc -ptx -arch=compute_80 -o scale_add.ptx scale_add.cu
extern "C" __global__ void scale_add(const float* x, const float* y, float* out, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a * x[i] + y[i];
}
