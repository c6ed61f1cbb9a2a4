// tensor_writer: writes chosen fields of the packets it receives, exactly
// (f32 values, integer fields as I64), as one .safetensors file per written
// step: <out_dir>/<subdir>/<prefix>_<seq>.safetensors, tensors named after
// the fields. For analysis outside diffuflow (FID, comparisons between runs,
// numpy/torch via the safetensors package) where PNGs would round to 8 bits.
//
// Example config:
//   - name: save
//     type: tensor_writer
//     params: {fields: [sample], every: 1, prefix: samples}
//
// in: the fields named by `fields`, any shape; f32, s32 or s64.
//
// Files are written atomically (graph/atomic_file.hpp), with the step and
// the pipeline seed as metadata. With an empty out_dir nothing is written.
#pragma once

#include "graph/node.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace diffuflow {

class TensorWriter : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::vector<std::string>, fields, {}, "the packet fields to write (tensor names in the file)",
                    .required());
    DIFFUFLOW_PARAM(int64_t, every, 1, "write every N-th step (seq divisible by N)", .range(1, 1e12));
    DIFFUFLOW_PARAM(std::string, prefix, "tensors", "file name prefix");
    DIFFUFLOW_PARAM(std::string, subdir, "samples", "folder inside the run's output folder");
  };

  static NodeContract contract();
  TensorWriter(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

  // The file step `seq` goes to (empty without an out_dir).
  std::filesystem::path file_for(int64_t seq);

 private:
  Params params_;
};

}  // namespace diffuflow
