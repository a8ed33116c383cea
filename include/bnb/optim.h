/* Optimizer updates: 32-bit states and 8-bit blockwise-quantized states.
 *
 * Parameters may be float32, float16 or bfloat16; gradients may have a different float dtype
 * than their parameters. All math is float32. A non-finite gradient element leaves its parameter
 * and its state values unchanged.
 */
#ifndef BNB_OPTIM_H
#define BNB_OPTIM_H

#include "bnb/bnb.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bnb_optimizer {
  BNB_OPTIM_ADAM = 1,     /* Adam / AdamW / LAMB (trust ratio when max_unorm > 0); 2 states */
  BNB_OPTIM_MOMENTUM = 2, /* SGD with momentum / LARS (trust ratio when max_unorm > 0); 1 state */
  BNB_OPTIM_RMSPROP = 3,  /* 1 state */
  BNB_OPTIM_ADAGRAD = 4,  /* 1 state */
  BNB_OPTIM_LION = 5,     /* 1 state */
  BNB_OPTIM_ADEMAMIX = 6  /* state1 holds two moments [2, n], state2 the second-moment estimate */
} bnb_optimizer_t;

/* Hyper-parameters of one step. `step` is the 1-based step number after incrementing. */
typedef struct bnb_optimizer_hparams {
  float lr;
  float beta1;
  float beta2;
  float beta3;        /* AdEMAMix slow-moment decay */
  float alpha;        /* AdEMAMix slow-moment weight */
  float eps;
  float weight_decay; /* decoupled (Adam, Lion, AdEMAMix) or added to the gradient (others) */
  float gnorm_scale;  /* gradients are multiplied by this first */
  float max_unorm;    /* > 0: scale the update so that ||update|| <= max_unorm * ||p|| (LAMB/LARS) */
  float param_norm;   /* ||p||_2, used when max_unorm > 0 */
  int32_t step;
  int32_t skip_zeros; /* non-zero: elements whose gradient is exactly 0 are left untouched */
} bnb_optimizer_hparams_t;

/* Number of elements per absmax block of the 8-bit states. */
#define BNB_OPTIM_8BIT_BLOCKSIZE 256

/* 32-bit states, updated in place.
 *   p [n] p_dtype; g [n] g_dtype; state1 [n] float32 ([2n] for AdEMAMix); state2 [n] float32 or NULL
 *   unorm [1] float32 scratch, required when max_unorm > 0 (receives the squared update norm)        */
BNB_API bnb_status_t bnb_optimizer_update_32bit(bnb_optimizer_t optimizer, const bnb_optimizer_hparams_t* hparams,
                                                void* p, bnb_dtype_t p_dtype, const void* g, bnb_dtype_t g_dtype,
                                                float* state1, float* state2, float* unorm, int64_t n,
                                                int32_t device, bnb_stream_t stream);

/* 8-bit blockwise states, updated in place: states are dequantized with qmap * absmax, updated in
 * float32, and re-quantized with a fresh per-block absmax (blocks of BNB_OPTIM_8BIT_BLOCKSIZE).
 *   state1 [n] uint8 ([2n] for AdEMAMix), qmap1 [256] signed map, absmax1 [nb] ([2 nb] for AdEMAMix)
 *   state2 [n] uint8 or NULL, qmap2 [256] unsigned map, absmax2 [nb]      (nb = ceil(n / 256))
 *   unorm [1] float32 scratch, required when max_unorm > 0                                            */
BNB_API bnb_status_t bnb_optimizer_update_8bit_blockwise(
    bnb_optimizer_t optimizer, const bnb_optimizer_hparams_t* hparams, void* p, bnb_dtype_t p_dtype, const void* g,
    bnb_dtype_t g_dtype, uint8_t* state1, uint8_t* state2, const float* qmap1, const float* qmap2, float* absmax1,
    float* absmax2, float* unorm, int64_t n, int32_t device, bnb_stream_t stream);

/* One tensor of a fused multi-tensor step. States are float32 (state_bits 32) or uint8 codes
 * (state_bits 8); absmax pointers are used by 8-bit states only. Layouts as above. */
typedef struct bnb_optimizer_tensor {
  void* p;
  const void* g;
  void* state1;
  void* state2;
  float* absmax1;
  float* absmax2;
  int64_t n;
} bnb_optimizer_tensor_t;

/* Fused step over `count` tensors sharing the rule, hyper-parameters, dtypes and state layout.
 * `tensors` is a host array (rows contiguous), free for reuse when the call returns. The CUDA
 * backend copies it to device memory through pinned staging and updates every tensor in one
 * launch; while the stream is being captured into a CUDA graph it passes the table by value
 * instead, one launch per up to BNB_OPTIM_MULTI_MAX_TENSORS tensors, so the graph holds its own
 * copy. Either way the call never synchronises. max_unorm must be 0 (the trust ratio is per
 * tensor: use the single-tensor call). */
#define BNB_OPTIM_MULTI_MAX_TENSORS 448
BNB_API bnb_status_t bnb_optimizer_update_multi(bnb_optimizer_t optimizer, const bnb_optimizer_hparams_t* hparams,
                                                int32_t state_bits, bnb_dtype_t p_dtype, bnb_dtype_t g_dtype,
                                                const float* qmap1, const float* qmap2,
                                                const bnb_optimizer_tensor_t* tensors, int64_t count, int32_t device,
                                                bnb_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* BNB_OPTIM_H */
