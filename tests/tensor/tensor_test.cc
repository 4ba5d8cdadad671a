// Tests of Tensor: construction, views (reshape, slice0), copies and conversions across dtypes.
#include "tensor/tensor.h"

#include <cstring>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "testing/testing.h"

namespace sdstack::tensor {
namespace {

TEST(Tensor, DefaultIsUndefined) {
  Tensor t;
  EXPECT_FALSE(t.defined());
  EXPECT_EQ(t.rank(), 0);
}

TEST(Tensor, EmptyAndZeros) {
  Tensor t = Tensor::zeros({2, 3, 4}, DType::kF16);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(t.rank(), 3);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 48u);
  EXPECT_EQ(t.dim(-1), 4);
  EXPECT_EQ(t.dim(0), 2);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.dtype(), DType::kF16);
  for (float v : t.to_vector()) EXPECT_EQ(v, 0.0f);
  // Owned storage is 64-byte aligned.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(Tensor::empty({3}).raw_data()) % 64, 0u);
  // A zero-size tensor is defined and has no elements.
  Tensor nothing = Tensor::empty({0, 5});
  EXPECT_TRUE(nothing.defined());
  EXPECT_EQ(nothing.numel(), 0);
  EXPECT_TRUE(nothing.to_vector().empty());
}

TEST(Tensor, FromVectorAndAt) {
  Tensor t = Tensor::from_vector({2, 3}, {0, 1, 2, 3, 4, 5});
  EXPECT_EQ(t.dtype(), DType::kF32);
  EXPECT_EQ(t.at({0, 0}), 0.0f);
  EXPECT_EQ(t.at({0, 2}), 2.0f);
  EXPECT_EQ(t.at({1, 0}), 3.0f);
  EXPECT_EQ(t.at({1, 2}), 5.0f);
  EXPECT_EQ(t.to_vector(), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(t.data<float>()[4], 4.0f);
}

TEST(Tensor, CopiesShareStorage) {
  Tensor a = Tensor::zeros({4});
  Tensor b = a;  // a view, like torch
  b.data<float>()[2] = 7.0f;
  EXPECT_EQ(a.at({2}), 7.0f);
}

TEST(Tensor, Reshape) {
  Tensor t = Tensor::from_vector({2, 3, 4}, std::vector<float>(24, 1.0f));
  Tensor r = t.reshape({6, 4});
  EXPECT_EQ(r.shape(), (Shape{6, 4}));
  EXPECT_EQ(r.strides(), (Shape{4, 1}));
  EXPECT_EQ(r.raw_data(), t.raw_data());  // a view, not a copy
  Tensor inferred = t.reshape({-1, 12});
  EXPECT_EQ(inferred.shape(), (Shape{2, 12}));
  EXPECT_EQ(t.reshape({4, -1, 2}).shape(), (Shape{4, 3, 2}));
  EXPECT_EQ(t.reshape({24}).shape(), (Shape{24}));
  r.data<float>()[5] = 3.0f;
  EXPECT_EQ(t.at({0, 1, 1}), 3.0f);
  EXPECT_EQ(inferred.at({0, 5}), 3.0f);
}

TEST(Tensor, Slice0) {
  std::vector<float> values(24);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i);
  Tensor t = Tensor::from_vector({4, 3, 2}, values);
  Tensor s = t.slice0(1, 2);
  EXPECT_EQ(s.shape(), (Shape{2, 3, 2}));
  EXPECT_TRUE(s.is_contiguous());
  EXPECT_EQ(s.at({0, 0, 0}), 6.0f);
  EXPECT_EQ(s.at({1, 2, 1}), 17.0f);
  std::vector<float> expected(values.begin() + 6, values.begin() + 18);
  EXPECT_EQ(s.to_vector(), expected);
  // Shares storage both ways.
  s.data<float>()[0] = -1.0f;
  EXPECT_EQ(t.at({1, 0, 0}), -1.0f);
  // Slices of slices, and empty and whole slices.
  EXPECT_EQ(s.slice0(1, 1).at({0, 0, 0}), 12.0f);
  EXPECT_EQ(t.slice0(4, 0).numel(), 0);
  EXPECT_EQ(t.slice0(0, 4).to_vector(), t.to_vector());
  // A slice reshapes like any contiguous tensor.
  EXPECT_EQ(t.slice0(3, 1).reshape({6}).to_vector(), (std::vector<float>{18, 19, 20, 21, 22, 23}));
}

TEST(Tensor, Slice0OfHalfTensor) {
  Tensor t = Tensor::from_vector({3, 2}, {1, 2, 3, 4, 5, 6}).to(DType::kF16);
  Tensor s = t.slice0(2, 1);
  EXPECT_EQ(s.to_vector(), (std::vector<float>{5, 6}));
  EXPECT_EQ(s.at({0, 1}), 6.0f);
  Tensor as_f32 = Tensor::empty({1, 2});
  as_f32.copy_from(s);
  EXPECT_EQ(as_f32.to_vector(), (std::vector<float>{5, 6}));
}

TEST(Tensor, ContiguousIsAnIndependentCopy) {
  Tensor t = Tensor::from_vector({2, 2}, {1, 2, 3, 4});
  Tensor s = t.slice0(1, 1);
  Tensor c = s.contiguous();
  EXPECT_NE(c.raw_data(), s.raw_data());
  EXPECT_EQ(c.shape(), (Shape{1, 2}));
  EXPECT_EQ(c.to_vector(), (std::vector<float>{3, 4}));
  c.data<float>()[0] = 9.0f;
  EXPECT_EQ(t.at({1, 0}), 3.0f);
}

TEST(Tensor, ToConvertsDtypes) {
  // Values exact in every dtype.
  const std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 0.125f, 1024.0f, -3.0f, 256.0f};
  Tensor f32 = Tensor::from_vector({2, 4}, values);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    Tensor t = f32.to(dtype);
    EXPECT_EQ(t.dtype(), dtype);
    EXPECT_EQ(t.shape(), f32.shape());
    EXPECT_EQ(t.nbytes(), 8 * dtype_size(dtype));
    EXPECT_EQ(t.to_vector(), values) << dtype_name(dtype);
    EXPECT_EQ(t.to(DType::kF32).to_vector(), values);
  }
  // to() of the same dtype is a copy, not a view.
  Tensor same = f32.to(DType::kF32);
  EXPECT_NE(same.raw_data(), f32.raw_data());
  // Rounding happens once, on the way to the narrow dtype.
  Tensor third = Tensor::from_vector({1}, {1.0f / 3.0f});
  EXPECT_EQ(third.to(DType::kF16).data<uint16_t>()[0], f32_to_f16(1.0f / 3.0f));
  EXPECT_EQ(third.to(DType::kBF16).data<uint16_t>()[0], f32_to_bf16(1.0f / 3.0f));
}

// copy_from between every pair of dtypes, from contiguous sources and from slices.
TEST(Tensor, CopyFromAcrossDtypes) {
  const std::vector<float> values = {1.0f, -2.0f, 0.5f, 3.0f, 1024.0f, -0.25f};
  const DType dtypes[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (DType from : dtypes) {
    Tensor src = Tensor::from_vector({3, 2}, values).to(from);
    for (DType to : dtypes) {
      Tensor dst = Tensor::zeros({3, 2}, to);
      dst.copy_from(src);
      EXPECT_EQ(dst.to_vector(), values) << dtype_name(from) << " -> " << dtype_name(to);
      Tensor row = Tensor::zeros({1, 2}, to);
      row.copy_from(src.slice0(1, 1));
      EXPECT_EQ(row.to_vector(), (std::vector<float>{0.5f, 3.0f})) << dtype_name(from) << " -> " << dtype_name(to);
    }
  }
  // Into a slice of a bigger tensor: only that slice changes.
  Tensor big = Tensor::zeros({3, 2});
  Tensor middle = big.slice0(1, 1);
  middle.copy_from(Tensor::from_vector({1, 2}, {7, 8}).to(DType::kF16));
  EXPECT_EQ(big.to_vector(), (std::vector<float>{0, 0, 7, 8, 0, 0}));
}

TEST(Tensor, CopyFromLargeTensorsMatchesScalarConversion) {
  // Above the size where the conversions go parallel.
  Tensor src = testing::random_tensor({300, 301}, 7, -100.0f, 100.0f);
  Tensor half = Tensor::empty({300, 301}, DType::kF16);
  half.copy_from(src);
  Tensor bf = Tensor::empty({300, 301}, DType::kBF16);
  bf.copy_from(src);
  const float* in = src.data<float>();
  for (int64_t i = 0; i < src.numel(); ++i) {
    ASSERT_EQ(half.data<uint16_t>()[i], f32_to_f16(in[i]));
    ASSERT_EQ(bf.data<uint16_t>()[i], f32_to_bf16(in[i]));
  }
  Tensor back = Tensor::empty({300, 301});
  back.copy_from(half);
  EXPECT_LE(testing::max_abs_diff(back, src), 100.0f / 2048.0f);
}

TEST(Tensor, Fill) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    Tensor t = Tensor::empty({5, 3}, dtype);
    t.fill(-1.5f);
    for (float v : t.to_vector()) EXPECT_EQ(v, -1.5f) << dtype_name(dtype);
  }
  Tensor half = Tensor::empty({2}, DType::kF16);
  half.fill(0.1f);
  EXPECT_EQ(half.data<uint16_t>()[1], f32_to_f16(0.1f));
  // Filling a slice leaves the rest alone.
  Tensor t = Tensor::zeros({3, 2});
  Tensor last = t.slice0(2, 1);
  last.fill(4.0f);
  EXPECT_EQ(t.to_vector(), (std::vector<float>{0, 0, 0, 0, 4, 4}));
}

TEST(Tensor, BorrowKeepsItsOwnerAlive) {
  auto owner = std::make_shared<std::vector<uint16_t>>(std::vector<uint16_t>{0x3c00, 0xc000, 0x3800, 0x0000});
  std::weak_ptr<std::vector<uint16_t>> watch = owner;
  Tensor t = Tensor::borrow(owner, owner->data(), {2, 2}, DType::kF16);
  owner.reset();
  EXPECT_FALSE(watch.expired());
  EXPECT_EQ(t.to_vector(), (std::vector<float>{1.0f, -2.0f, 0.5f, 0.0f}));
  EXPECT_EQ(t.raw_data(), watch.lock()->data());
  t = Tensor();
  EXPECT_TRUE(watch.expired());
}

TEST(Tensor, ShapeString) {
  Tensor t = Tensor::empty({320, 4, 3, 3});
  EXPECT_NE(t.shape_string().find("320"), std::string::npos);
  EXPECT_EQ(contiguous_strides({2, 3, 4}), (Shape{12, 4, 1}));
  EXPECT_EQ(shape_numel({2, 3, 4}), 24);
  EXPECT_EQ(shape_numel({}), 1);
}

}  // namespace
}  // namespace sdstack::tensor

#include "tensor/layout.h"

namespace sdstack::tensor {
namespace {

TEST(LayoutTest, NchwNhwcRoundTripAndElementPlacement) {
  Tensor nchw = sdstack::testing::random_tensor({2, 3, 4, 5}, 7);
  Tensor nhwc = nchw_to_nhwc(nchw);
  ASSERT_EQ(nhwc.shape(), (Shape{2, 4, 5, 3}));
  EXPECT_EQ(nhwc.at({1, 2, 3, 0}), nchw.at({1, 0, 2, 3}));
  EXPECT_EQ(nhwc.at({0, 3, 4, 2}), nchw.at({0, 2, 3, 4}));
  Tensor back = nhwc_to_nchw(nhwc);
  EXPECT_EQ(back.to_vector(), nchw.to_vector());
  Tensor half = nchw_to_nhwc(nchw.to(DType::kF16));
  EXPECT_EQ(half.dtype(), DType::kF16);
  EXPECT_EQ(half.at({1, 2, 3, 1}), nchw.to(DType::kF16).at({1, 1, 2, 3}));
}

}  // namespace
}  // namespace sdstack::tensor
