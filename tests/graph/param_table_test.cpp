#include "graph/errors.hpp"
#include "graph/param_table.hpp"
#include "graph/registry.hpp"

#include <doctest/doctest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>

using namespace diffuflow;

namespace {

DIFFUFLOW_ENUM(Colour, red, green, light_blue);

struct Window {
  DIFFUFLOW_PARAMS(Window);
  DIFFUFLOW_PARAM(int64_t, width, 640, "pixels across", .range(1, 8192));
  DIFFUFLOW_PARAM(bool, resizable, true, "whether the user may resize it");
};

struct Everything {
  DIFFUFLOW_PARAMS(Everything);
  DIFFUFLOW_PARAM(bool, flag, false, "a switch");
  DIFFUFLOW_PARAM(int, count, 3, "how many", .range(0, 10));
  DIFFUFLOW_PARAM(double, rate, 0.25, "a rate", .at_least(0.0));
  DIFFUFLOW_PARAM(std::string, title, "hello", "a name");
  DIFFUFLOW_PARAM(std::string, folder, "", "where files are", .path().required());
  DIFFUFLOW_PARAM(std::string, model, "", "a model", .resource("model"));
  DIFFUFLOW_PARAM(Colour, colour, Colour::green, "a colour");
  DIFFUFLOW_PARAM(std::vector<int64_t>, shape, (std::vector<int64_t>{1, 28, 28}), "a shape", .range(1, 100));
  DIFFUFLOW_PARAM(std::vector<double>, weights, {}, "some weights");
  DIFFUFLOW_PARAM(std::vector<std::string>, names, (std::vector<std::string>{"a", "b"}), "some names");
  DIFFUFLOW_PARAM_GROUP(Window, window, (Window{800, false}));
  DIFFUFLOW_PARAM(int64_t, last, -1, "declared after the group");
};

const ParamSpec& row(const std::vector<ParamSpec>& rows, const std::string& name) {
  auto it = std::find_if(rows.begin(), rows.end(), [&](const ParamSpec& s) { return s.name == name; });
  REQUIRE(it != rows.end());
  return *it;
}

ParamValues resolve(const std::vector<ParamSpec>& rows, const std::string& yaml, std::vector<ConfigError>& errors) {
  SourceLocation where{"p.yaml", 0, 0, "nodes[0].params"};
  return resolve_params(rows, YAML::Load(yaml), where, errors);
}

}  // namespace

TEST_CASE("a parameter struct declares its rows once: names, types, defaults and docs in declaration order") {
  const auto& rows = param_specs<Everything>();
  std::vector<std::string> names;
  for (const auto& r : rows) names.push_back(r.name);
  CHECK(names == std::vector<std::string>{"flag", "count", "rate", "title", "folder", "model", "colour", "shape",
                                          "weights", "names", "width", "resizable", "last"});
  CHECK(row(rows, "flag").type == ParamType::boolean);
  CHECK(row(rows, "count").type == ParamType::integer);
  CHECK(std::get<int64_t>(row(rows, "count").default_value) == 3);
  CHECK(*row(rows, "count").max == 10);
  CHECK(row(rows, "rate").type == ParamType::number);
  CHECK(std::get<double>(row(rows, "rate").default_value) == 0.25);
  CHECK(row(rows, "title").type == ParamType::text);
  CHECK(row(rows, "folder").type == ParamType::path);
  CHECK(row(rows, "folder").is_required);
  CHECK(row(rows, "model").type == ParamType::resource);
  CHECK(row(rows, "model").resource_type == "model");
  CHECK(row(rows, "model").is_required);
  CHECK(row(rows, "colour").type == ParamType::choice);
  CHECK(row(rows, "colour").choices == std::vector<std::string>{"red", "green", "light_blue"});
  CHECK(std::get<std::string>(row(rows, "colour").default_value) == "green");
  CHECK(row(rows, "shape").type == ParamType::int_list);
  CHECK(std::get<std::vector<int64_t>>(row(rows, "shape").default_value) == std::vector<int64_t>{1, 28, 28});
  CHECK(row(rows, "weights").type == ParamType::number_list);
  CHECK(row(rows, "names").type == ParamType::text_list);
  CHECK(row(rows, "count").doc == "how many");
}

TEST_CASE("a parameter group brings its rows with the enclosing struct's defaults") {
  const auto& rows = param_specs<Everything>();
  CHECK(std::get<int64_t>(row(rows, "width").default_value) == 800);
  CHECK(std::get<bool>(row(rows, "resizable").default_value) == false);
  CHECK(*row(rows, "width").min == 1);
  // The group's own struct keeps its own defaults.
  CHECK(std::get<int64_t>(row(param_specs<Window>(), "width").default_value) == 640);
}

TEST_CASE("resolved YAML values fill the struct; what is not given keeps its default") {
  std::vector<ConfigError> errors;
  const ParamValues values = resolve(param_specs<Everything>(),
                                     "{folder: data, model: m, count: 7, colour: light_blue, shape: [3, 32, 32], "
                                     "width: 1024, weights: [0.5, 1]}",
                                     errors);
  REQUIRE(errors.empty());
  const Everything e = params_from<Everything>(values);
  CHECK(e.count == 7);
  CHECK(e.colour == Colour::light_blue);
  CHECK(e.shape == std::vector<int64_t>{3, 32, 32});
  CHECK(e.weights == std::vector<double>{0.5, 1.0});
  CHECK(e.window.width == 1024);
  CHECK(e.window.resizable == false);
  CHECK(e.rate == 0.25);
  CHECK(e.title == "hello");
  CHECK(e.folder == "data");
  CHECK(e.last == -1);
  // And back: the struct's values are the resolved ones.
  const ParamValues again = ParamTable<Everything>::get().values(e);
  CHECK(again.values() == values.values());
}

TEST_CASE("an enum parameter refuses a value outside its enumerators, naming them and the closest one") {
  std::vector<ConfigError> errors;
  resolve(param_specs<Everything>(), "{folder: d, model: m, colour: light_blu}", errors);
  REQUIRE(errors.size() == 1);
  CHECK(std::string(errors[0].what()).find("red|green|light_blue") != std::string::npos);
  CHECK(std::string(errors[0].what()).find("did you mean 'light_blue'") != std::string::npos);
  CHECK(errors[0].where().key_path == "nodes[0].params.colour");
}

TEST_CASE("the enum helper parses, prints and lists an enum's YAML spellings") {
  CHECK(parse_enum<Colour>("red") == Colour::red);
  CHECK(parse_enum<Colour>("light_blue") == Colour::light_blue);
  CHECK(enum_name(Colour::green) == "green");
  CHECK(enum_choices<Colour>() == std::vector<std::string>{"red", "green", "light_blue"});
  CHECK_THROWS_WITH_AS(parse_enum<Colour>("gren", "colour"), "colour 'gren' is not one of red|green|light_blue "
                                                             "(did you mean 'green'?)",
                       ConfigError);
  CHECK_THROWS_AS(enum_name(static_cast<Colour>(7)), std::out_of_range);
}

namespace {

struct Listed {
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, size, 1, "a size");
  };
  static NodeContract contract() {
    NodeContract c;
    c.params = {ParamSpec::integer("size", 1, "listed a second time")};
    return c;
  }
};

}  // namespace

TEST_CASE("registration takes a node's parameters from its Params struct, and refuses a second list") {
  const NodeContract* add = Registry::instance().node_contract("test_add");
  REQUIRE(add != nullptr);
  REQUIRE(add->params.size() == 2);
  CHECK(add->params[0].name == "amount");
  CHECK(add->params[1].name == "sleep_us");
  const ResourceContract* resource = Registry::instance().resource_contract("test_resource");
  REQUIRE(resource != nullptr);
  REQUIRE(resource->params.size() == 1);
  CHECK(resource->params[0].is_required);
  CHECK_THROWS_WITH_AS(node_contract_of<Listed>("Listed"), doctest::Contains("declared in its Params struct"),
                       std::logic_error);
}
