// Class conditioning as the data, diffusion and model nodes share it.
//
// Convention (classifier-free guidance): a model conditioned on K classes has
// num_class_embeds = K + 1 rows in its class embedding; rows 0..K-1 are the
// classes and the LAST row, K = num_class_embeds - 1, is the null class that
// label dropout trains and guided sampling asks for the unconditional
// prediction with. A data set with labels 0..9 thus needs num_class_embeds 11.
//
// Nodes outside nodes/model learn about a model resource's class embedding
// through ClassEmbedding (every model resource implements it):
//
//   const int64_t rows = class_embeds_of(ctx, params_.model, "model");  // 0: unconditional
#pragma once

#include "graph/run_context.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace diffuflow {

class ClassEmbedding {
 public:
  virtual ~ClassEmbedding() = default;
  // Rows of the model's class embedding table (num_class_embeds); 0: the model takes no labels.
  virtual int64_t num_class_embeds() = 0;
};

// The null class of a model with `num_class_embeds` rows: the last row.
inline int32_t null_class(int64_t num_class_embeds) { return static_cast<int32_t>(num_class_embeds - 1); }
// The real classes of such a model (labels 0 .. count-1); 0 for an unconditional model.
inline int64_t real_class_count(int64_t num_class_embeds) { return num_class_embeds > 1 ? num_class_embeds - 1 : 0; }

// num_class_embeds of the model resource `name`; a ConfigError naming `param`
// when there is no such resource or it is not a model.
int64_t class_embeds_of(const RunContext& ctx, const std::string& name, const std::string& param);

// Parses a class choice: "all" (every class 0..classes-1), one class ("7") or
// a comma-separated list ("1,4,7"); "" gives an empty list. A ConfigError
// naming `param` for text that is none of these or a class outside
// [0, classes) (with the null-class convention in the message).
std::vector<int32_t> parse_class_choice(const std::string& text, int64_t classes, const std::string& param);

// The labels of n images given `classes` (non-empty): the images split into
// classes.size() consecutive blocks of (nearly) equal size, block j of class
// classes[j], so a grid with n / classes.size() images per row shows one
// class per row. Image i gets classes[i * classes.size() / n].
std::vector<int32_t> block_labels(const std::vector<int32_t>& classes, int64_t n);

// The labels of images first .. first + n - 1 of a run given `classes`
// (non-empty): image i gets classes[i % classes.size()].
std::vector<int32_t> cycle_labels(const std::vector<int32_t>& classes, int64_t n, int64_t first);

}  // namespace diffuflow
