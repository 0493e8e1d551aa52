// Command stream streams one completion from a llama-orch orchestrator and, at the
// same time, follows the fact stream for its job.
//
//	stream -addr 127.0.0.1:9100 -model tiny -prompt "the fox"
//
// stdout: the generated text as it arrives, then one summary line
//
//	finish_reason=length prompt_tokens=4 completion_tokens=32 total_tokens=36 job=<id>
//
// stderr: one line per fact of the job ("fact id=7 kind=JOB_STARTED code=job.started").
// It exits 0 once the job's terminal fact (finished, failed or cancelled) was seen;
// on failure it prints one line "error: <CODE>: <message>" and exits 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	orchv1 "llamaorch/gen/go/llama_orch/v1"
	"llamaorch/sdk/go/llamaorch"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9100", "orchestrator address (host:port)")
	model := flag.String("model", "tiny", "model alias or ref")
	prompt := flag.String("prompt", "tell me a story about a fox", "prompt text")
	chat := flag.Bool("chat", false, "send the prompt as one user chat message")
	maxTokens := flag.Uint("max-tokens", 32, "maximum tokens to generate")
	seed := flag.Int64("seed", -1, "sampling seed (-1: let the orchestrator choose)")
	apiKey := flag.String("api-key", os.Getenv("LLAMA_ORCH_API_KEY"), "API key (lab and platform modes)")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	err := run(ctx, *addr, *model, *prompt, *chat, uint32(*maxTokens), *seed, *apiKey)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %s\n", oneLine(err))
		cancel()
		os.Exit(1)
	}
}

func run(ctx context.Context, addr, model, prompt string, chat bool, maxTokens uint32, seed int64, apiKey string) error {
	var opts []llamaorch.Option
	if apiKey != "" {
		opts = append(opts, llamaorch.WithAPIKey(apiKey))
	}
	c, err := llamaorch.Dial(addr, opts...)
	if err != nil {
		return err
	}
	defer c.Close()

	input := llamaorch.Prompt(prompt)
	if chat {
		input = llamaorch.Chat(llamaorch.Message{Role: "user", Content: prompt})
	}
	params := &llamaorch.Params{MaxTokens: maxTokens}
	if seed >= 0 {
		params.Seed = llamaorch.Uint64(uint64(seed))
	}

	// The fact watcher starts as soon as the job id is known (the first event). It
	// asks for the job's facts with replay, so none are lost to the race with the job.
	jobIDs := make(chan string, 1)
	factsDone := make(chan error, 1)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() { factsDone <- watchJobFacts(watchCtx, c, jobIDs) }()

	s, err := c.Generate(ctx, model, input, params)
	if err != nil {
		return err
	}
	defer s.Close()
	var finish []string
	var usage *orchv1.Usage
	sent := false
	for s.Next() {
		ev := s.Event()
		if !sent && ev.JobID != "" {
			jobIDs <- ev.JobID
			sent = true
		}
		if ev.Text != "" {
			fmt.Print(ev.Text)
		}
		if ev.FinishReason != "" {
			finish = append(finish, ev.FinishReason)
			usage = addUsage(usage, ev.Usage)
		}
	}
	if err := s.Err(); err != nil {
		if sent {
			fmt.Println()
			waitFacts(factsDone, 5*time.Second) // print the job's facts up to its failure
		}
		return err
	}
	if len(finish) == 0 {
		return errors.New("stream ended without an end event")
	}
	fmt.Printf("\nfinish_reason=%s prompt_tokens=%d completion_tokens=%d total_tokens=%d job=%s\n",
		strings.Join(finish, ","), usage.GetPromptTokens(), usage.GetCompletionTokens(),
		usage.GetTotalTokens(), s.JobID())
	return waitFacts(factsDone, 30*time.Second)
}

// watchJobFacts prints the facts of the job whose id arrives on jobIDs and returns
// after its terminal fact.
func watchJobFacts(ctx context.Context, c *llamaorch.Client, jobIDs <-chan string) error {
	var jobID string
	select {
	case jobID = <-jobIDs:
	case <-ctx.Done():
		return ctx.Err()
	}
	w, err := c.WatchFacts(ctx, llamaorch.FactFilter{JobID: jobID})
	if err != nil {
		return err
	}
	defer w.Close()
	for f := range w.C {
		fmt.Fprintf(os.Stderr, "fact id=%d kind=%s code=%s\n", f.GetId(),
			strings.TrimPrefix(f.GetKind().String(), "FACT_KIND_"), f.GetCode())
		if llamaorch.IsTerminalJobFact(f) {
			return nil
		}
	}
	if err := w.Err(); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("fact stream ended before the job's terminal fact")
}

func waitFacts(done <-chan error, limit time.Duration) error {
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("watching facts: %w", err)
		}
		return nil
	case <-time.After(limit):
		return fmt.Errorf("no terminal fact for the job within %s", limit)
	}
}

func addUsage(total, u *orchv1.Usage) *orchv1.Usage {
	if total == nil {
		return u
	}
	if u == nil {
		return total
	}
	// A job's usage is the prompt once plus every choice's completion tokens.
	return &orchv1.Usage{
		PromptTokens:     total.PromptTokens,
		CompletionTokens: total.CompletionTokens + u.CompletionTokens,
		TotalTokens:      total.TotalTokens + u.CompletionTokens,
	}
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
