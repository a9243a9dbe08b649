/*
 * edgetune C API example: open a model, print its shapes, generate a few tokens, print the
 * memory plan of a LoRA run as JSON, and show how a failure reads (a missing file). Then
 * fine-tune step by step: write a small JSONL dataset, create a trainer on the open model,
 * run its steps in two calls with a progress callback, write a checkpoint, export the adapter
 * (edgetune's format and a llama.cpp LoRA GGUF), attach it to the model and generate with it.
 *
 *   usage: main MODEL.gguf [PROMPT [RUN_DIR]]
 *
 * RUN_DIR (default MODEL.gguf.run) receives the run's checkpoints/, the exports adapter/ and
 * adapter.gguf; the dataset is written to RUN_DIR.jsonl.
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

/* Training progress: called on this thread after every optimizer step of et_trainer_step.
 * Returning nonzero would stop the call after this step (ET_STATUS_CANCELLED). */
static int on_progress(const EtProgress *p, void *user_data) {
  unsigned *calls = user_data;
  *calls += 1;
  printf("  step %llu/%llu  loss %.4f  lr %.2e  %.0f tok/s\n", (unsigned long long)p->step,
         (unsigned long long)p->total_steps, p->loss, p->lr, p->tokens_per_s);
  fflush(stdout);
  return 0;
}

/* The paths go into JSON strings unescaped: refuse the characters that would need escaping. */
static int json_safe(const char *s) {
  for (; *s; s++)
    if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20) return 0;
  return 1;
}

/* Greedy generation of `max_tokens` into `buf` (`cap` bytes). */
static EtStatus generate_greedy(const EtModel *model, const char *prompt, unsigned max_tokens,
                                char *buf, size_t cap) {
  EtGenerateOptions g = et_generate_default_options();
  g.max_tokens = max_tokens;
  g.temperature = 0.0f;
  return et_generate(model, prompt, &g, buf, cap, NULL);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL.gguf [PROMPT]\n", argv[0]);
    return 2;
  }
  const char *path = argv[1];
  const char *prompt = argc > 2 ? argv[2] : "Sensor 3 reads";
  char run_dir[1024], data_path[1100], adapter_dir[1100], adapter_gguf[1100];
  snprintf(run_dir, sizeof run_dir, argc > 3 ? "%s" : "%s.run", argc > 3 ? argv[3] : path);
  snprintf(data_path, sizeof data_path, "%s.jsonl", run_dir);
  snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", run_dir);
  snprintf(adapter_gguf, sizeof adapter_gguf, "%s/adapter.gguf", run_dir);
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

  /* --- Fine-tuning --------------------------------------------------------------------- */
  if (!json_safe(path) || !json_safe(run_dir)) {
    fprintf(stderr, "paths with quotes, backslashes or control characters are not supported\n");
    return 1;
  }
  /* A tiny JSONL dataset: one {"text": ...} object per line. */
  FILE *data = fopen(data_path, "w");
  if (data == NULL) {
    perror(data_path);
    return 1;
  }
  for (int i = 0; i < 16; i++)
    fprintf(data, "{\"text\": \"Sensor %d reads %d.%d C; battery %d.%02d V; status ok.\"}\n", i % 5,
            18 + i, i % 10, 3, 60 + i);
  if (fclose(data) != 0) {
    perror(data_path);
    return 1;
  }

  /* The configuration has the fields of `edgetune train`; missing ones take its defaults.
   * "model" is left out: the trainer takes the open model's file. */
  char train_cfg[4096];
  snprintf(train_cfg, sizeof train_cfg,
           "{\"data\": \"%s\", \"out\": \"%s\", \"steps\": 4, \"seq_len\": 32,"
           " \"batch\": 1, \"lr\": 0.005, \"lora\": {\"rank\": 4, \"alpha\": 8}}",
           data_path, run_dir);
  printf("trainer configuration: %s\n", train_cfg);

  /* A misspelt setting is refused, naming it. */
  EtTrainer *trainer = NULL;
  st = et_trainer_new(model, "{\"stepz\": 4}", &trainer);
  if (st != ET_STATUS_INVALID_ARGUMENT || trainer != NULL) {
    fprintf(stderr, "expected ET_STATUS_INVALID_ARGUMENT for an unknown key, got %d\n", (int)st);
    return 1;
  }
  printf("bad trainer config -> status %d: %s\n", (int)st, et_last_error());

  st = et_trainer_new(model, train_cfg, &trainer);
  if (st != ET_STATUS_OK) return fail("et_trainer_new", st);
  uint64_t total = 0, done = 0, completed = 0;
  st = et_trainer_total_steps(trainer, &total);
  if (st != ET_STATUS_OK) return fail("et_trainer_total_steps", st);

  /* Two steps, then the rest: a call makes at most n_steps, fewer once the run is over. */
  unsigned progress_calls = 0;
  st = et_trainer_step(trainer, 2, on_progress, &progress_calls, &done);
  if (st != ET_STATUS_OK) return fail("et_trainer_step (2)", st);
  printf("  -- %llu steps in the first call\n", (unsigned long long)done);
  st = et_trainer_step(trainer, 1000, on_progress, &progress_calls, &done);
  if (st != ET_STATUS_OK) return fail("et_trainer_step (rest)", st);
  st = et_trainer_completed(trainer, &completed);
  if (st != ET_STATUS_OK) return fail("et_trainer_completed", st);
  printf("  -- %llu steps in the second call; %llu of %llu done\n", (unsigned long long)done,
         (unsigned long long)completed, (unsigned long long)total);
  if (total != 4 || completed != 4 || done != 2 || progress_calls != 4) {
    fprintf(stderr, "expected 4 steps (2 + 2) and 4 progress reports, got %llu/%llu and %u\n",
            (unsigned long long)completed, (unsigned long long)total, progress_calls);
    return 1;
  }

  /* A resumable checkpoint ("resume": true continues from it), itself an adapter directory. */
  char ckpt[1024], latest[1024];
  st = et_trainer_checkpoint(trainer, ckpt, sizeof ckpt, &len);
  if (st != ET_STATUS_OK) return fail("et_trainer_checkpoint", st);
  st = et_train_latest_checkpoint(run_dir, latest, sizeof latest, NULL);
  if (st != ET_STATUS_OK) return fail("et_train_latest_checkpoint", st);
  if (strcmp(ckpt, latest) != 0) {
    fprintf(stderr, "the newest checkpoint should be %s, is %s\n", ckpt, latest);
    return 1;
  }
  printf("checkpoint: %s\n", ckpt);

  /* Exports: edgetune's adapter directory, and a llama.cpp LoRA GGUF
   * (`llama-cli -m MODEL --lora adapter.gguf`). */
  st = et_trainer_export(trainer, "native", adapter_dir);
  if (st != ET_STATUS_OK) return fail("et_trainer_export (native)", st);
  st = et_trainer_export(trainer, "gguf", adapter_gguf);
  if (st != ET_STATUS_OK) return fail("et_trainer_export (gguf)", st);
  printf("exported %s and %s\n", adapter_dir, adapter_gguf);
  et_trainer_free(trainer);

  static char base_text[4096], tuned_text[4096], again_text[4096];
  st = generate_greedy(model, prompt, 16, base_text, sizeof base_text);
  if (st != ET_STATUS_OK) return fail("et_generate (base)", st);
  st = et_model_set_adapter(model, adapter_dir);
  if (st != ET_STATUS_OK) return fail("et_model_set_adapter", st);
  st = generate_greedy(model, prompt, 16, tuned_text, sizeof tuned_text);
  if (st != ET_STATUS_OK) return fail("et_generate (adapter)", st);
  printf("greedy, base model:   %s\ngreedy, with adapter: %s\n", base_text, tuned_text);

  /* A missing adapter is an error; the attached one stays. */
  st = et_model_set_adapter(model, "/nonexistent/adapter");
  if (st != ET_STATUS_IO) {
    fprintf(stderr, "expected ET_STATUS_IO for a missing adapter, got %d\n", (int)st);
    return 1;
  }
  printf("missing adapter -> status %d: %s\n", (int)st, et_last_error());

  /* The GGUF export holds the same adapter: the same greedy text. */
  st = et_model_set_adapter(model, adapter_gguf);
  if (st != ET_STATUS_OK) return fail("et_model_set_adapter (exported GGUF)", st);
  st = generate_greedy(model, prompt, 16, again_text, sizeof again_text);
  if (st != ET_STATUS_OK) return fail("et_generate (GGUF adapter)", st);
  if (strcmp(again_text, tuned_text) != 0) {
    fprintf(stderr, "the GGUF export should generate what the native export does\n");
    return 1;
  }
  printf("attached %s: same text\n", adapter_gguf);

  /* NULL detaches the adapter: generation is the base model's again. */
  st = et_model_set_adapter(model, NULL);
  if (st != ET_STATUS_OK) return fail("et_model_set_adapter (NULL)", st);
  st = generate_greedy(model, prompt, 16, tuned_text, sizeof tuned_text);
  if (st != ET_STATUS_OK) return fail("et_generate (detached)", st);
  if (strcmp(tuned_text, base_text) != 0) {
    fprintf(stderr, "without the adapter the text should be the base model's again\n");
    return 1;
  }

  et_model_free(model);
  printf("ok\n");
  return 0;
}
