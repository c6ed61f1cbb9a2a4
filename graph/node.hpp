// Node: the unit of work in a pipeline. A node type declares its contract
// (ports, packet fields read and written, host-only or device), its
// parameters as a parameter struct (graph/param_table.hpp), and is registered
// with one line:
//
//   DIFFUFLOW_REGISTER_NODE(augment, Augment)
//
// where Augment has `static NodeContract contract();`, optionally a nested
// parameter struct `Params` (its rows become the contract's parameters), and a
// constructor `Augment(const NodeConfig&, RunContext&)` that reads
// `config.params_as<Params>()`. The registered name is the YAML `type:` and
// equals the file stem of the node's source.
#pragma once

#include "graph/field.hpp"
#include "graph/packet.hpp"
#include "graph/param_table.hpp"
#include "graph/run_context.hpp"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

// A text (or text-list) parameter whose value names further fields a port
// reads or writes (an image writer's `field: sample`), and what those fields
// must hold (the spec's name is unused).
struct FieldParam {
  std::string param;
  FieldSpec expects;
  FieldParam(const char* param_name) : param(param_name) {}
  FieldParam(std::string param_name, FieldSpec expected = {}) : param(std::move(param_name)), expects(std::move(expected)) {}
};

struct PortSpec {
  std::string name;
  std::vector<FieldSpec> fields;  // input: fields read; output: fields written
  std::string doc;                // shapes in words, e.g. "x0 [N,C,H,W] f32 in [-1,1]"
  std::vector<FieldParam> field_params = {};
};

enum class InputPolicy {
  join,  // one packet from every input port with the same seq (tag-matching join)
  any    // each packet as it arrives, on whichever port (loops, merges)
};

struct NodeContract {
  std::string type;  // filled in by the registration macro
  std::string doc;
  std::string example;  // a YAML snippet
  std::vector<ParamSpec> params;  // filled in by the registration macro from the node's `Params`
  std::vector<PortSpec> inputs;
  std::vector<PortSpec> outputs;
  InputPolicy input_policy = InputPolicy::join;
  bool host_only = true;    // false: runs its oneDNN work on the compute executor
  bool passthrough = true;  // output packets carry the fields of the input packet
  int max_concurrency = 0;  // 0: any `concurrency:` is allowed; 1: the node is serial by nature

  bool is_source() const { return inputs.empty(); }
  int input_index(const std::string& port) const;
  int output_index(const std::string& port) const;
};

struct NodeConfig {
  std::string name;
  std::string type;
  ParamValues params;
  int concurrency = 1;

  // The parameters as the node's parameter struct.
  template <typename S>
  S params_as() const {
    return params_from<S>(params);
  }
};

// What a node receives: for InputPolicy::join one packet per input port (same
// seq); for InputPolicy::any a single packet and the port it came in on.
struct NodeInput {
  int port = 0;
  std::vector<PacketPtr> packets;

  const Packet& operator[](size_t i) const { return *packets.at(i); }
  const Packet& packet() const { return *packets.at(0); }
  const PacketPtr& ptr(size_t i = 0) const { return packets.at(i); }
  int64_t seq() const { return packets.at(0)->seq(); }
};

// Where a node puts its results: zero or more packets per call, on any output port.
class Emitter {
 public:
  virtual ~Emitter() = default;
  virtual void emit(int port, PacketPtr packet) = 0;
  void emit(PacketPtr packet) { emit(0, std::move(packet)); }
  void emit(Packet packet) { emit(0, std::move(packet).share()); }
  void emit(int port, Packet packet) { emit(port, std::move(packet).share()); }
};

class Node {
 public:
  Node(const NodeConfig& config, RunContext& ctx) : name_(config.name), ctx_(ctx) {}
  virtual ~Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Non-source nodes: called once per input (see NodeInput).
  virtual void process(const NodeInput& in, Emitter& out) {}
  // Source nodes: emit the next packet(s); return false when exhausted. Called
  // serially. Sources must honour ctx().stop_requested() and ctx().max_steps.
  virtual bool produce(Emitter& out) { return false; }
  // Sources, on resume: continue as if `packets` packets holding `items` items
  // (-1: unknown) had been emitted, without producing them. Returns false when
  // the source cannot; the builder then replays its first `packets` packets.
  virtual bool seek(int64_t packets, int64_t items) { return false; }
  // Called once after the graph has drained (write a final grid, a summary).
  virtual void finish() {}

  const std::string& name() const { return name_; }
  RunContext& ctx() { return ctx_; }

 private:
  std::string name_;
  RunContext& ctx_;
};

}  // namespace diffuflow
