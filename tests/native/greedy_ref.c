/* Independent greedy decoding straight on libllama: argmax over the logits,
 * one token at a time.  Prints the prompt's token ids on the first line and
 * the generated ids on the second.  The tests compare mullama against it.
 * usage: greedy_ref MODEL N_PREDICT N_CTX PROMPT
 * With a build of loadable backends (--portable), GGML_BACKEND_DIR names their folder. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *ud) { (void)level; (void)text; (void)ud; }

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s MODEL N_PREDICT N_CTX PROMPT\n", argv[0]); return 2; }
    int n_predict = atoi(argv[2]);
    llama_log_set(quiet, NULL);
    llama_backend_init();
    if (ggml_backend_reg_count() == 0 && getenv("GGML_BACKEND_DIR")) {
        ggml_backend_load_all_from_path(getenv("GGML_BACKEND_DIR"));
    }
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)atoi(argv[3]);
    cp.n_batch = 2048;
    cp.n_ubatch = 512;
    cp.n_threads = cp.n_threads_batch = 2;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    const char *prompt = argv[4];
    int n_prompt = -llama_tokenize(vocab, prompt, (int)strlen(prompt), NULL, 0, true, true);
    llama_token *toks = malloc(sizeof(llama_token) * (size_t)(n_prompt + n_predict));
    llama_tokenize(vocab, prompt, (int)strlen(prompt), toks, n_prompt, true, true);
    for (int i = 0; i < n_prompt; i++) printf("%s%d", i ? " " : "", toks[i]);
    printf("\n");
    struct llama_batch batch = llama_batch_get_one(toks, n_prompt);
    int n_vocab = llama_vocab_n_tokens(vocab);
    for (int i = 0; i < n_predict; i++) {
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        const float *logits = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (llama_token t = 1; t < n_vocab; t++) if (logits[t] > logits[best]) best = t;
        if (llama_vocab_is_eog(vocab, best)) break;
        printf("%s%d", i ? " " : "", best);
        toks[n_prompt + i] = best;
        batch = llama_batch_get_one(&toks[n_prompt + i], 1);
    }
    printf("\n");
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
