/* Sampled decoding straight on libllama, through llama.cpp's own sampler chain:
 * penalties, top-k, top-p, min-p, temperature, dist(seed), in llama.cpp's order,
 * applied by llama_sampler_sample to the whole vocabulary (MODE "host"), or
 * attached to the context so that it runs inside the decode graph (MODE
 * "device": llama_context_params.samplers).  End-of-generation tokens are
 * sampled like any other (no stop), so the run always has N_PREDICT tokens.
 * Prints the prompt's token ids on the first line and the sampled ids on the
 * second.  The tests compare mullama's two sampling paths against it.
 * usage: sampled_ref MODEL MODE N_PREDICT N_CTX SEED TOP_K TOP_P MIN_P TEMP
 *                    PENALTY_LAST_N PENALTY_REPEAT PENALTY_FREQ PENALTY_PRESENT PROMPT
 * With a build of loadable backends (--portable), GGML_BACKEND_DIR names their folder. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *ud) { (void)level; (void)text; (void)ud; }

int main(int argc, char **argv) {
    if (argc != 15) {
        fprintf(stderr, "usage: %s MODEL MODE N_PREDICT N_CTX SEED TOP_K TOP_P MIN_P TEMP "
                        "PENALTY_LAST_N PENALTY_REPEAT PENALTY_FREQ PENALTY_PRESENT PROMPT\n", argv[0]);
        return 2;
    }
    const int device = strcmp(argv[2], "device") == 0;
    const int n_predict = atoi(argv[3]);
    const int top_k = atoi(argv[6]);
    const float top_p = (float)atof(argv[7]), min_p = (float)atof(argv[8]), temp = (float)atof(argv[9]);
    const int last_n = atoi(argv[10]);
    const float repeat = (float)atof(argv[11]), freq = (float)atof(argv[12]), present = (float)atof(argv[13]);
    llama_log_set(quiet, NULL);
    llama_backend_init();
    if (ggml_backend_reg_count() == 0 && getenv("GGML_BACKEND_DIR")) {
        ggml_backend_load_all_from_path(getenv("GGML_BACKEND_DIR"));
    }
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = getenv("REF_N_GPU_LAYERS") ? atoi(getenv("REF_N_GPU_LAYERS")) : 0;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);

    struct llama_sampler *chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
    if (last_n != 0 && (repeat != 1.0f || freq != 0.0f || present != 0.0f)) {
        llama_sampler_chain_add(chain, llama_sampler_init_penalties(llama_vocab_n_tokens(vocab), last_n, repeat, freq, present));
    }
    if (top_k > 0) llama_sampler_chain_add(chain, llama_sampler_init_top_k(top_k));
    if (top_p < 1.0f) llama_sampler_chain_add(chain, llama_sampler_init_top_p(top_p, 1));
    if (min_p > 0.0f) llama_sampler_chain_add(chain, llama_sampler_init_min_p(min_p, 1));
    llama_sampler_chain_add(chain, llama_sampler_init_temp(temp));
    llama_sampler_chain_add(chain, llama_sampler_init_dist((uint32_t)strtoul(argv[5], NULL, 10)));

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)atoi(argv[4]);
    cp.n_batch = 2048;
    cp.n_ubatch = 512;
    cp.n_outputs_max_per_seq = 1;
    cp.n_threads = cp.n_threads_batch = 2;
    struct llama_sampler_seq_config cfg = { 0, chain };
    if (device) {
        cp.samplers = &cfg;
        cp.n_samplers = 1;
    }
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "context failed\n"); return 1; }

    const char *prompt = argv[14];
    int n_prompt = -llama_tokenize(vocab, prompt, (int)strlen(prompt), NULL, 0, true, true);
    llama_token *toks = malloc(sizeof(llama_token) * (size_t)(n_prompt + n_predict));
    llama_tokenize(vocab, prompt, (int)strlen(prompt), toks, n_prompt, true, true);
    for (int i = 0; i < n_prompt; i++) printf("%s%d", i ? " " : "", toks[i]);
    printf("\n");
    /* the penalties see the prompt's last tokens first */
    int from = last_n > 0 && n_prompt > last_n ? n_prompt - last_n : 0;
    for (int i = from; i < n_prompt; i++) llama_sampler_accept(chain, toks[i]);
    struct llama_batch batch = llama_batch_get_one(toks, n_prompt);
    for (int i = 0; i < n_predict; i++) {
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        llama_token t = llama_sampler_sample(chain, ctx, -1);
        printf("%s%d", i ? " " : "", t);
        toks[n_prompt + i] = t;
        batch = llama_batch_get_one(&toks[n_prompt + i], 1);
    }
    printf("\n");
    llama_free(ctx);
    llama_sampler_free(chain);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
