#include "runners/options.hpp"

#include "compute/program.hpp"
#include "graph/errors.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace diffuflow {

namespace po = boost::program_options;

OptionSpec OptionSpec::flag(std::string name, std::string doc) {
  OptionSpec o;
  o.name = std::move(name);
  o.type = OptionType::flag;
  o.doc = std::move(doc);
  return o;
}

OptionSpec OptionSpec::text(std::string name, std::string value_name, std::string doc) {
  OptionSpec o;
  o.name = std::move(name);
  o.value_name = std::move(value_name);
  o.type = OptionType::text;
  o.doc = std::move(doc);
  return o;
}

OptionSpec OptionSpec::integer(std::string name, std::string value_name, std::string doc) {
  OptionSpec o = text(std::move(name), std::move(value_name), std::move(doc));
  o.type = OptionType::integer;
  return o;
}

OptionSpec OptionSpec::number(std::string name, std::string value_name, std::string doc) {
  OptionSpec o = text(std::move(name), std::move(value_name), std::move(doc));
  o.type = OptionType::number;
  return o;
}

OptionSpec OptionSpec::positional(std::string name, std::string value_name, std::string doc) {
  OptionSpec o = text(std::move(name), std::move(value_name), std::move(doc));
  o.is_positional = true;
  o.is_required = true;
  return o;
}

namespace {

std::string bound_str(double v) {
  std::ostringstream out;
  if (v == std::floor(v) && std::fabs(v) < 1e15)
    out << static_cast<long long>(v);
  else
    out << v;
  return out.str();
}

}  // namespace

std::string OptionSpec::synopsis() const {
  if (is_positional) return value_name;
  std::string s = short_flag ? std::string("-") + short_flag + ", --" + name : "--" + name;
  if (type != OptionType::flag) s += " " + value_name;
  return s;
}

std::string OptionSpec::full_doc() const {
  std::string s = doc;
  std::vector<std::string> notes;
  if (min && max)
    notes.push_back(bound_str(*min) + " to " + bound_str(*max));
  else if (min)
    notes.push_back("at least " + bound_str(*min));
  else if (max)
    notes.push_back("at most " + bound_str(*max));
  if (!default_text.empty()) notes.push_back("default " + default_text);
  if (is_repeatable) notes.push_back("repeatable");
  if (is_required && !is_positional) notes.push_back("required");
  if (!notes.empty()) {
    s += " (";
    for (size_t i = 0; i < notes.size(); ++i) s += (i ? "; " : "") + notes[i];
    s += ")";
  }
  return s;
}

namespace shared {

OptionSpec pipeline_file() { return OptionSpec::positional("pipeline", "P.yaml", "the pipeline file"); }

OptionSpec set_overrides() {
  return OptionSpec::text("set", "NODE.PARAM=VALUE",
                          "override a node's or resource's parameter, or a pipeline setting (seed=, device=, "
                          "threads=, deterministic=); checked exactly like the YAML it replaces")
      .repeatable();
}

OptionSpec threads() {
  return OptionSpec::integer("threads", "N",
                             "cores to use: the OpenMP threads of the compute work and oneTBB's parallelism "
                             "limit, 0 for every CPU this process may use; overrides a pipeline's `threads:`")
      .range(0, 1024);
}

OptionSpec device() {
  return OptionSpec::text("device", "DEVICE",
                          "where the oneDNN work runs: cpu, gpu or gpu:N; overrides a pipeline's `device:`");
}

OptionSpec prefetch() {
  return OptionSpec::integer("prefetch", "N", "packets each source may have in flight")
      .range(1, 65536)
      .fallback("4");
}

OptionSpec unet_config() {
  return OptionSpec::text("config", "C",
                          "U-Net config: a built-in name (unet-s, unet-tiny) or a diffusers config.json; overrides "
                          "the config of a pipeline's unet_model (scheduler-io: a diffusers scheduler_config.json "
                          "or a folder holding one)");
}

OptionSpec batch() {
  return OptionSpec::integer("batch", "N", "images per batch; overrides the batch_size of a pipeline's source")
      .range(1, 65536)
      .fallback("64");
}

OptionSpec warmup() {
  return OptionSpec::integer("warmup", "W", "warm-up steps (for the U-Net alone: passes) before the measured ones")
      .range(0, 1 << 20);
}

OptionSpec json_file() { return OptionSpec::text("json", "FILE", "also write the results as JSON to this file"); }

OptionSpec output() {
  return OptionSpec::text("out", "PATH",
                          "where the results go: run, a new folder (default runs/<pipeline>-<timestamp>); "
                          "export, a new diffusers pipeline folder; unet-io and scheduler-io, a .safetensors file; "
                          "plot and roofline, a PNG; sample, a grid PNG or a folder for one PNG per image");
}

OptionSpec unet_mode() {
  return OptionSpec::text("mode", "MODE",
                          "U-Net passes to time: forward, train (forward+backward) or both (bench-unet only)");
}

OptionSpec steps() {
  return OptionSpec::integer("steps", "K",
                             "bench: measured steps (train/data: batches; sample: chains; unet: passes); "
                             "scheduler-io: the inference steps given to set_timesteps; sample: model calls per "
                             "image");
}

OptionSpec seed() {
  return OptionSpec::integer("seed", "S",
                             "random seed: bench-unet, of the weights and inputs; sample, of the images (image i "
                             "depends only on the seed and i)")
      .at_least(0);
}

OptionSpec precision() {
  return enum_spec("precision", Precision::f32, "convolution arithmetic: f32 or bf16 (mixed precision)");
}

OptionSpec activation_layout() {
  return enum_spec("activation-layout", ActivationLayout::by_isa,
                   "layout of the image activations between layers (unet_model's `activation_layout`)");
}

OptionSpec bf16_backward() {
  return enum_spec("bf16-backward", Bf16Backward::by_shape,
                   "layout of bf16 training's backward convolutions (unet_model's `bf16_backward`)");
}

OptionSpec convolution() {
  return enum_spec("convolution", ConvAlgorithm::by_shape,
                   "how f32 3x3 convolutions are computed (unet_model's `convolution`)");
}

OptionSpec class_choice() {
  return OptionSpec::text("class", "all|C|C1,C2,...",
                          "the classes a class-conditional model draws: all (the default), one, or a list; image i "
                          "takes the (i mod count)-th");
}

OptionSpec guidance() {
  return OptionSpec::number("guidance", "W",
                            "classifier-free guidance scale w: eps_uncond + w (eps_cond - eps_uncond); 1: none")
      .range(0, 100)
      .fallback("1");
}

OptionSpec teams() {
  return OptionSpec::integer("teams", "R",
                             "split each U-Net pass's batch into R parts computed at once, each by a team of "
                             "threads/R OpenMP threads (R must divide the threads); 1: one team of them all; "
                             "overrides a pipeline's `teams:`")
      .range(1, 1024);
}

OptionSpec breakdown() {
  return OptionSpec::flag("breakdown",
                          "U-Net: after the timed passes, as many again with each step waited for and timed, for "
                          "the time per layer kind (convolution, group_norm, ...) and primitive kind");
}

OptionSpec inputs() {
  return OptionSpec::text("inputs", "IN.safetensors",
                          "input tensors (.safetensors): unet-io, x, t, optionally class_labels and g_out; scheduler-io, "
                          "sample, model_output, step_timesteps and optionally noise and eta");
}

}  // namespace shared

// ---- parsed values ------------------------------------------------------------------------------

ParsedOptions::ParsedOptions(const OptionTable& table, po::variables_map values)
    : table_(table), values_(std::move(values)) {}

const OptionSpec& ParsedOptions::spec(const std::string& name, OptionType type) const {
  for (const auto& o : table_) {
    if (o.name != name) continue;
    if (o.type != type) throw std::logic_error("option '--" + name + "' is read with another type than declared");
    return o;
  }
  throw std::logic_error("option '--" + name + "' is not in the command's option table");
}

bool ParsedOptions::has(const std::string& name) const {
  for (const auto& o : table_)
    if (o.name == name) return values_.count(name) != 0;
  throw std::logic_error("option '--" + name + "' is not in the command's option table");
}

bool ParsedOptions::flag(const std::string& name) const {
  spec(name, OptionType::flag);
  return values_.count(name) != 0;
}

const std::string& ParsedOptions::text(const std::string& name) const {
  const OptionSpec& o = spec(name, OptionType::text);
  if (o.is_repeatable) throw std::logic_error("option '--" + name + "' is repeatable: read it with texts()");
  if (!values_.count(name)) throw std::logic_error("option '--" + name + "' has no value: check has() first");
  return values_[name].as<std::string>();
}

int64_t ParsedOptions::integer(const std::string& name) const {
  spec(name, OptionType::integer);
  if (!values_.count(name)) throw std::logic_error("option '--" + name + "' has no value: check has() first");
  return values_[name].as<int64_t>();
}

double ParsedOptions::number(const std::string& name) const {
  spec(name, OptionType::number);
  if (!values_.count(name)) throw std::logic_error("option '--" + name + "' has no value: check has() first");
  return values_[name].as<double>();
}

std::vector<std::string> ParsedOptions::texts(const std::string& name) const {
  const OptionSpec& o = spec(name, OptionType::text);
  if (!values_.count(name)) return {};
  if (o.is_repeatable) return values_[name].as<std::vector<std::string>>();
  return {values_[name].as<std::string>()};
}

// ---- usage and help -----------------------------------------------------------------------------

namespace {

// The usage line's pieces: positionals, required options, then the optional ones, each in table order.
std::vector<std::string> usage_words(const OptionTable& table) {
  std::vector<std::string> words;
  for (const auto& o : table)
    if (o.is_positional) words.push_back(o.is_required ? o.value_name : "[" + o.value_name + "]");
  auto named = [](const OptionSpec& o) {
    std::string s = o.short_flag ? std::string("-") + o.short_flag + "|--" + o.name : "--" + o.name;
    if (o.type != OptionType::flag) s += " " + o.value_name;
    if (o.is_repeatable) s += " ...";
    return s;
  };
  for (const auto& o : table)
    if (!o.is_positional && o.is_required) words.push_back(named(o));
  for (const auto& o : table)
    if (!o.is_positional && !o.is_required) words.push_back("[" + named(o) + "]");
  return words;
}

// Words laid out in lines of at most `width` columns (a longer word gets a line of its own).
std::string wrap(const std::vector<std::string>& words, size_t first_column, size_t indent, size_t width) {
  std::string out;
  size_t column = first_column;
  bool line_empty = true;
  for (const auto& w : words) {
    if (!line_empty && column + 1 + w.size() > width) {
      out += "\n" + std::string(indent, ' ');
      column = indent;
      line_empty = true;
    }
    if (!line_empty) {
      out += ' ';
      ++column;
    }
    out += w;
    column += w.size();
    line_empty = false;
  }
  return out;
}

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

}  // namespace

std::string usage_line(const std::string& command, const OptionTable& table) {
  std::string line = command;
  for (const auto& w : usage_words(table)) line += " " + w;
  return line;
}

std::string wrapped_usage(const std::string& prefix, const std::string& command, const OptionTable& table,
                          size_t width) {
  std::vector<std::string> words = usage_words(table);
  const std::string head = prefix + command;
  // Continuation lines start under the first argument, and deeper than a summary line indented by 6.
  const size_t indent = std::max<size_t>(head.size() + 1, 8);
  return head + (words.empty() ? "" : " " + wrap(words, head.size() + 1, indent, width));
}

std::string help_text(const std::string& command, const std::string& summary, const OptionTable& table) {
  std::ostringstream out;
  out << wrapped_usage("usage: diffuflow ", command, table) << "\n\n" << summary << "\n";
  OptionTable named, positional;
  for (const auto& o : table) (o.is_positional ? positional : named).push_back(o);
  named.push_back(OptionSpec::flag("help", "show this help").short_name('h'));
  size_t column = 0;
  for (const auto& o : table) column = std::max(column, o.synopsis().size());
  column = std::min<size_t>(column, 28) + 4;
  auto section = [&](const char* title, const OptionTable& list) {
    if (list.empty()) return;
    out << "\n" << title << ":\n";
    for (const auto& o : list) {
      std::string left = "  " + o.synopsis();
      const bool own_line = left.size() + 2 > column;
      out << left;
      if (own_line) {
        out << "\n" << std::string(column, ' ');
      } else {
        out << std::string(column - left.size(), ' ');
      }
      out << wrap(split_words(o.full_doc()), column, column, 100) << "\n";
    }
  };
  section("arguments", positional);
  section("options", named);
  return out.str();
}

// ---- parsing ------------------------------------------------------------------------------------

namespace {

ConfigError command_line_error(const std::string& option, const std::string& what, const std::string& usage) {
  return ConfigError(SourceLocation{"command line", 0, 0, option}, what + "\n" + usage);
}

// Boost's name for an option: "threads" or "quiet,q".
std::string po_name(const OptionSpec& o) { return o.short_flag ? o.name + "," + o.short_flag : o.name; }

po::value_semantic* semantic(const OptionSpec& o) {
  switch (o.type) {
    case OptionType::flag: return nullptr;
    case OptionType::text:
      if (o.is_repeatable) return po::value<std::vector<std::string>>()->composing();
      if (!o.default_text.empty()) return po::value<std::string>()->default_value(o.default_text);
      return po::value<std::string>();
    case OptionType::integer:
      if (!o.default_text.empty())
        return po::value<int64_t>()->default_value(std::stoll(o.default_text), o.default_text);
      return po::value<int64_t>();
    case OptionType::number:
      if (!o.default_text.empty())
        return po::value<double>()->default_value(std::stod(o.default_text), o.default_text);
      return po::value<double>();
  }
  return nullptr;
}

}  // namespace

std::optional<ParsedOptions> parse_options(const std::string& command, const std::string& summary,
                                           const OptionTable& table, const std::vector<std::string>& args,
                                           std::ostream& help_out) {
  const std::string usage = wrapped_usage("usage: diffuflow ", command, table);
  po::options_description all;
  po::positional_options_description positional;
  std::vector<std::string> names = {"help"};  // long names, for suggestions
  for (const auto& o : table) {
    if (po::value_semantic* s = semantic(o))
      all.add_options()(po_name(o).c_str(), s, o.doc.c_str());
    else
      all.add_options()(po_name(o).c_str(), o.doc.c_str());
    if (o.is_positional)
      positional.add(o.name.c_str(), 1);
    else
      names.push_back(o.name);
  }
  all.add_options()("help,h", "show this help");

  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).positional(positional).run(), vm);
  } catch (const po::unknown_option& e) {
    std::string given = e.get_option_name();
    given = given.substr(0, given.find('='));
    const std::string bare = given.substr(std::min(given.find_first_not_of('-'), given.size()));
    const std::string near = bare.size() > 1 ? closest_match(bare, names) : "";
    throw command_line_error(given, std::string(e.what()) + (near.empty() ? "" : " (did you mean '--" + near + "'?)"),
                             usage);
  } catch (const po::error& e) {
    throw command_line_error("", e.what(), usage);
  }
  // --help before any other check: a command's required options must not be demanded to show its help.
  if (vm.count("help")) {
    help_out << help_text(command, summary, table);
    return std::nullopt;
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    throw command_line_error("", e.what(), usage);
  }
  for (const auto& o : table) {
    if (o.is_required && !vm.count(o.name)) {
      throw command_line_error(o.is_positional ? o.value_name : "--" + o.name,
                               o.is_positional ? "missing " + o.value_name + ": " + o.doc
                                               : "the option '--" + o.name + "' is required but missing",
                               usage);
    }
    if (!vm.count(o.name) || (o.type != OptionType::integer && o.type != OptionType::number)) continue;
    const double v = o.type == OptionType::integer ? static_cast<double>(vm[o.name].as<int64_t>())
                                                   : vm[o.name].as<double>();
    if (!std::isfinite(v)) throw command_line_error("--" + o.name, "expected a finite number", usage);
    if ((o.min && v < *o.min) || (o.max && v > *o.max)) {
      const std::string bounds = o.min && o.max ? bound_str(*o.min) + " to " + bound_str(*o.max)
                                 : o.min        ? "at least " + bound_str(*o.min)
                                                : "at most " + bound_str(*o.max);
      throw command_line_error("--" + o.name, "value " + bound_str(v) + " is out of range: must be " + bounds, usage);
    }
  }
  return ParsedOptions(table, std::move(vm));
}

}  // namespace diffuflow
