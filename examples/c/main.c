/*
 * edgetune C API example: open a model, print its shapes, generate a few tokens, print the
 * memory plan of a LoRA run as JSON, and show how a failure reads (a missing file).
 *
 *   usage: main MODEL.gguf [PROMPT]
 *
 * Exit status 0 when every step behaved as expected. Built and run by examples/c/run.sh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgetune.h"

/* Prints the failure of `what` and returns 1 (for `return fail(...)`). */
static int fail(const char *what, EtStatus st) {
  fprintf(stderr, "%s failed: status %d: %s\n", what, (int)st, et_last_error());
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL.gguf [PROMPT]\n", argv[0]);
    return 2;
  }
  const char *path = argv[1];
  const char *prompt = argc > 2 ? argv[2] : "Sensor 3 reads";
  printf("edgetune %s\n", et_version());

  /* A missing file: a status code and a message naming the file, no crash, no output. */
  EtModel *missing = NULL;
  EtStatus st = et_model_open("/nonexistent/model.gguf", &missing);
  if (st != ET_STATUS_IO || missing != NULL) {
    fprintf(stderr, "expected ET_STATUS_IO for a missing file, got %d\n", (int)st);
    return 1;
  }
  printf("missing file -> status %d: %s\n", (int)st, et_last_error());

  EtModel *model = NULL;
  st = et_model_open(path, &model);
  if (st != ET_STATUS_OK) return fail("et_model_open", st);

  EtModelInfo info;
  st = et_model_info(model, &info);
  if (st != ET_STATUS_OK) return fail("et_model_info", st);
  printf("model: %u layers, dim %u, heads %u/%u (head dim %u), ffn %u, vocab %u, context %u, "
         "%llu weight bytes\n",
         info.n_layer, info.dim, info.n_head, info.n_head_kv, info.head_dim, info.ffn,
         info.n_vocab, info.context_length, (unsigned long long)info.weight_bytes);

  /* Generate: first ask for the length with a buffer that is too small, then for the text. */
  EtGenerateOptions opts = et_generate_default_options();
  opts.max_tokens = 16;
  opts.temperature = 0.7f;
  opts.seed = 1;
  size_t len = 0;
  char small[4];
  st = et_generate(model, prompt, &opts, small, sizeof small, &len);
  if (st == ET_STATUS_OK) {
    printf("generated (fits in %zu bytes): %s\n", sizeof small, small);
  } else if (st == ET_STATUS_BUFFER_TOO_SMALL) {
    printf("buffer of %zu bytes too small: need %zu + 1 (%s)\n", sizeof small, len,
           et_last_error());
    char *text = malloc(len + 1);
    if (text == NULL) return 1;
    /* The same seed and options give the same text. */
    st = et_generate(model, prompt, &opts, text, len + 1, &len);
    if (st != ET_STATUS_OK) return fail("et_generate", st);
    printf("prompt: %s\ngenerated %zu bytes: %s\n", prompt, len, text);
    free(text);
  } else {
    return fail("et_generate", st);
  }

  /* The memory plan of a small LoRA run on this model, with a 2 GiB budget. */
  const char *config =
      "{\"seq_len\": 64, \"batch\": 1, \"lora\": {\"rank\": 8}, \"ce_chunk\": 32,"
      " \"budget_bytes\": 2147483648}";
  static char plan[1 << 16];
  st = et_plan_json(path, config, plan, sizeof plan, &len);
  if (st != ET_STATUS_OK) return fail("et_plan_json", st);
  printf("plan (%zu bytes of JSON): %s\n", len, plan);

  /* A bad configuration is an error, not a crash. */
  st = et_plan_json(path, "{\"seq_len\": 0}", plan, sizeof plan, &len);
  if (st != ET_STATUS_INVALID_ARGUMENT) {
    fprintf(stderr, "expected ET_STATUS_INVALID_ARGUMENT for seq_len 0, got %d\n", (int)st);
    return 1;
  }
  printf("bad config -> status %d: %s\n", (int)st, et_last_error());

  et_model_free(model);
  printf("ok\n");
  return 0;
}
