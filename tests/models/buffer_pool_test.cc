// BufferPool: a buffer is handed out again only once no tensor over it is alive; best fit; small
// tensors and coarser-level leftovers stay out of the pool.
#include "models/buffer_pool.h"

#include <gtest/gtest.h>

namespace sdstack::models {
namespace {

using tensor::Tensor;

constexpr int64_t kLarge = BufferPool::kMinPooledBytes / sizeof(float);  // floats in the smallest pooled size

TEST(BufferPoolTest, ReusesABufferOnceItsTensorsAreGone) {
  BufferPool pool;
  const void* first = nullptr;
  {
    Tensor a = pool.empty({1, kLarge});
    first = a.raw_data();
    Tensor b = pool.empty({1, kLarge});  // a is alive: another buffer
    EXPECT_NE(b.raw_data(), first);
  }
  Tensor c = pool.empty({kLarge, 1});  // both free again: the first buffer, another shape
  EXPECT_EQ(c.raw_data(), first);
  EXPECT_EQ(c.shape(), (tensor::Shape{kLarge, 1}));
  EXPECT_EQ(pool.pooled_bytes(), 2 * BufferPool::kMinPooledBytes);
}

TEST(BufferPoolTest, AViewKeepsItsBufferInUse) {
  BufferPool pool;
  Tensor view;
  const void* data = nullptr;
  {
    Tensor a = pool.empty({2, kLarge});
    data = a.raw_data();
    view = a.reshape({kLarge, 2});
  }
  Tensor b = pool.empty({2, kLarge});
  EXPECT_NE(b.raw_data(), data);
}

TEST(BufferPoolTest, BestFitAndSmallerLeftoversFreedForALargerRequest) {
  BufferPool pool;
  { Tensor small = pool.empty({kLarge}), big = pool.empty({3, kLarge}); }
  EXPECT_EQ(pool.pooled_bytes(), 4 * BufferPool::kMinPooledBytes);
  {
    Tensor a = pool.empty({kLarge});  // best fit: the small buffer, not the big one
    EXPECT_EQ(a.numel(), kLarge);
    EXPECT_EQ(pool.pooled_bytes(), 4 * BufferPool::kMinPooledBytes);
  }
  // Nothing free holds 4 units: the free small and big buffers are dropped, one new one made.
  Tensor huge = pool.empty({4, kLarge});
  EXPECT_EQ(pool.pooled_bytes(), 4 * BufferPool::kMinPooledBytes);
  EXPECT_EQ(huge.numel(), 4 * kLarge);
}

TEST(BufferPoolTest, SmallTensorsAreNotPooled) {
  BufferPool pool;
  Tensor a = pool.empty({4, 4});
  EXPECT_EQ(a.numel(), 16);
  EXPECT_EQ(pool.pooled_bytes(), 0u);
  EXPECT_EQ(empty_activation(nullptr, {kLarge}).numel(), kLarge);
}

}  // namespace
}  // namespace sdstack::models
