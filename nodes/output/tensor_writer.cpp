#include "nodes/output/tensor_writer.hpp"

#include "graph/registry.hpp"
#include "graph/safetensors.hpp"
#include "nodes/common/output_files.hpp"

#include <stdexcept>

namespace diffuflow {

namespace fs = std::filesystem;

NodeContract TensorWriter::contract() {
  NodeContract c;
  c.doc = "Writes packet fields exactly (f32, integers as I64) as one .safetensors file per step.";
  c.example = "{name: save, type: tensor_writer, params: {fields: [sample], prefix: samples}}";
  FieldSpec any_tensor;  // any dtype and rank; the dtype is checked when writing
  any_tensor.kind = FieldKind::tensor;
  c.inputs = {{"in",
               {},
               "the fields named by `fields`: f32, s32 or s64 tensors of any shape",
               {FieldParam("fields", any_tensor)}}};
  c.outputs = {};
  return c;
}

TensorWriter::TensorWriter(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  if (params_.fields.empty()) throw ConfigError(SourceLocation{}, "node '" + name() + "': fields must not be empty");
  check_output_subdir(name(), params_.subdir);
}

fs::path TensorWriter::file_for(int64_t seq) {
  if (ctx().out_dir().empty()) return {};
  return ctx().out_dir() / params_.subdir / (params_.prefix + "_" + step_str(seq) + ".safetensors");
}

void TensorWriter::process(const NodeInput& in, Emitter& /*out*/) {
  const Packet& packet = in.packet();
  const int64_t seq = packet.seq();
  if (ctx().out_dir().empty() || seq % params_.every != 0) return;
  SafetensorsFile file;
  for (const auto& field : params_.fields) {
    const Tensor& t = packet.tensor(field);
    if (t.dtype() == DType::f32) {
      file.add_f32(field, t);
    } else if (t.dtype() == DType::s32 || t.dtype() == DType::s64) {
      file.add_i64(field, t.shape(), t.to_int64_vector());
    } else {
      throw std::invalid_argument("tensor_writer: field '" + field + "' is " + dtype_name(t.dtype()) +
                                  "; f32, s32 or s64 can be written");
    }
  }
  file.set_metadata("step", std::to_string(seq));
  file.set_metadata("seed", std::to_string(ctx().seed()));
  const fs::path path = file_for(seq);
  create_parent_folders(path);
  file.write(path);
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(tensor_writer, diffuflow::TensorWriter);
