// Package llamaorch is a small Go client for the llama-orch orchestrator's
// ClientService (proto/llama_orch/v1/client.proto).
//
//	c, err := llamaorch.Dial("127.0.0.1:50051")
//	if err != nil { ... }
//	defer c.Close()
//	s, err := c.Generate(ctx, "tiny", llamaorch.Prompt("the fox"), &llamaorch.Params{MaxTokens: 32})
//	if err != nil { ... }
//	for s.Next() {
//		fmt.Print(s.Event().Text)
//	}
//	if err := s.Err(); err != nil {
//		fmt.Println(llamaorch.CodeOf(err)) // e.g. "MODEL_NOT_FOUND"
//	}
//
// Failures are *Error values carrying the stable code string of errors.proto, taken
// from the google.rpc.ErrorInfo detail the orchestrator attaches to every failed call
// (or from the ErrorDetail of a stream's terminal error event).
//
// The generated messages and stubs are in llamaorch/gen/go/llama_orch/v1 (orchv1);
// Client.RPC gives the raw stub for the calls this package does not wrap.
package llamaorch

import (
	"context"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	orchv1 "llamaorch/gen/go/llama_orch/v1"
)

// Client talks to one orchestrator. It is safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn
	rpc  orchv1.ClientServiceClient
	md   metadata.MD
}

type dialConfig struct {
	creds  credentials.TransportCredentials
	apiKey string
	extra  []grpc.DialOption
}

// Option configures Dial.
type Option func(*dialConfig)

// WithTransportCredentials uses TLS (or mTLS) instead of a plaintext connection, e.g.
// credentials.NewTLS(&tls.Config{...}).
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(c *dialConfig) { c.creds = creds }
}

// WithAPIKey sends "authorization: Bearer <key>" on every call (lab and platform modes).
func WithAPIKey(key string) Option {
	return func(c *dialConfig) { c.apiKey = key }
}

// WithDialOptions passes extra options to grpc.Dial.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *dialConfig) { c.extra = append(c.extra, opts...) }
}

// Dial connects to the orchestrator at address ("host:port"). Without
// WithTransportCredentials the connection is plaintext. Dial does not wait for the
// server: the first call reports an unreachable one.
func Dial(address string, opts ...Option) (*Client, error) {
	var cfg dialConfig
	for _, o := range opts {
		o(&cfg)
	}
	dopts := []grpc.DialOption{grpc.WithInsecure()}
	if cfg.creds != nil {
		dopts = []grpc.DialOption{grpc.WithTransportCredentials(cfg.creds)}
	}
	dopts = append(dopts, cfg.extra...)
	conn, err := grpc.Dial(address, dopts...)
	if err != nil {
		return nil, toError(err)
	}
	c := &Client{conn: conn, rpc: orchv1.NewClientServiceClient(conn)}
	if cfg.apiKey != "" {
		c.md = metadata.Pairs("authorization", "Bearer "+cfg.apiKey)
	}
	return c, nil
}

// Close closes the connection; streams still open fail.
func (c *Client) Close() error { return c.conn.Close() }

// RPC is the generated ClientService stub, for calls this package does not wrap.
// It does not add the API key: use c.Context(ctx) for that.
func (c *Client) RPC() orchv1.ClientServiceClient { return c.rpc }

// Context adds the client's per-call metadata (the API key) to ctx.
func (c *Client) Context(ctx context.Context) context.Context {
	if len(c.md) == 0 {
		return ctx
	}
	return metadata.NewOutgoingContext(ctx, metadata.Join(metadataOf(ctx), c.md))
}

func metadataOf(ctx context.Context) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md
}

// ---- Requests ------------------------------------------------------------------

// Input is what the model continues: Prompt(text) or Chat(messages...).
type Input interface{ apply(spec *orchv1.JobSpec) }

type promptInput string

func (p promptInput) apply(spec *orchv1.JobSpec) {
	spec.Input = &orchv1.JobSpec_Prompt{Prompt: string(p)}
}

// Prompt is a plain-text completion prompt.
func Prompt(text string) Input { return promptInput(text) }

// Message is one chat turn; Role is "system", "user" or "assistant".
type Message struct {
	Role    string
	Content string
	Name    string
}

type chatInput []Message

func (m chatInput) apply(spec *orchv1.JobSpec) {
	chat := &orchv1.ChatMessages{}
	for _, msg := range m {
		chat.Messages = append(chat.Messages,
			&orchv1.ChatMessage{Role: msg.Role, Content: msg.Content, Name: msg.Name})
	}
	spec.Input = &orchv1.JobSpec_Chat{Chat: chat}
}

// Chat is a chat conversation.
func Chat(messages ...Message) Input { return chatInput(messages) }

// Params are the optional parts of a job. Nil pointers leave the choice to the
// orchestrator (which always records the seed it used).
type Params struct {
	MaxTokens        uint32
	Temperature      *float32
	TopP             *float32
	TopK             *int32
	Seed             *uint64
	Stop             []string
	PresencePenalty  *float32
	FrequencyPenalty *float32
	// N choices; 0 means 1.
	N           uint32
	Logprobs    bool
	TopLogprobs uint32

	Priority orchv1.Priority
	// DeadlineMs is the per-job deadline; 0 means the orchestrator's default.
	DeadlineMs uint32
	KeepOutput bool
	// Detach keeps a Generate job running if the client goes away.
	Detach         bool
	User           string
	Labels         map[string]string
	IdempotencyKey string
}

// Float32, Int32 and Uint64 return pointers, for the optional fields of Params.
func Float32(v float32) *float32 { return &v }
func Int32(v int32) *int32       { return &v }
func Uint64(v uint64) *uint64    { return &v }

// Spec builds the JobSpec that Generate and Submit send.
func Spec(model string, input Input, p *Params) *orchv1.JobSpec {
	if p == nil {
		p = &Params{}
	}
	spec := &orchv1.JobSpec{
		Model: model,
		Sampling: &orchv1.SamplingParams{
			Temperature: p.Temperature, TopP: p.TopP, TopK: p.TopK, Seed: p.Seed,
			MaxTokens: p.MaxTokens, Stop: p.Stop, PresencePenalty: p.PresencePenalty,
			FrequencyPenalty: p.FrequencyPenalty, N: p.N, Logprobs: p.Logprobs,
			TopLogprobs: p.TopLogprobs,
		},
		Priority: p.Priority, DeadlineMs: p.DeadlineMs, KeepOutput: p.KeepOutput,
		Detach: p.Detach, User: p.User, Labels: p.Labels,
	}
	if input != nil {
		input.apply(spec)
	}
	return spec
}

func idempotencyKey(p *Params) string {
	if p == nil {
		return ""
	}
	return p.IdempotencyKey
}

// ---- Calls ---------------------------------------------------------------------

// Generate submits a job and streams its events. Closing the stream (or cancelling
// ctx) before the end cancels the job unless Params.Detach is set.
func (c *Client) Generate(ctx context.Context, model string, input Input, p *Params) (*Stream, error) {
	ctx, cancel := context.WithCancel(c.Context(ctx))
	rs, err := c.rpc.Generate(ctx, &orchv1.GenerateRequest{
		Spec: Spec(model, input, p), IdempotencyKey: idempotencyKey(p)})
	if err != nil {
		cancel()
		return nil, toError(err)
	}
	return newStream(cancel, func() (*orchv1.JobEvent, error) {
		r, err := rs.Recv()
		return r.GetEvent(), err
	}, ""), nil
}

// Submit admits a job and returns at once. existing is true when the idempotency key
// matched an earlier submission (job is then that one).
func (c *Client) Submit(ctx context.Context, model string, input Input, p *Params) (job *orchv1.Job, existing bool, err error) {
	r, err := c.rpc.Submit(c.Context(ctx), &orchv1.SubmitRequest{
		Spec: Spec(model, input, p), IdempotencyKey: idempotencyKey(p)})
	if err != nil {
		return nil, false, toError(err)
	}
	return r.GetJob(), r.GetExisting(), nil
}

// StreamJob streams a job's events with seq > afterSeq: 0 from the start, or
// Stream.LastSeq() of an interrupted stream to resume it. Closing this stream does not
// cancel the job.
func (c *Client) StreamJob(ctx context.Context, jobID string, afterSeq uint64) (*Stream, error) {
	ctx, cancel := context.WithCancel(c.Context(ctx))
	rs, err := c.rpc.StreamJob(ctx, &orchv1.StreamJobRequest{JobId: jobID, AfterSeq: afterSeq})
	if err != nil {
		cancel()
		return nil, toError(err)
	}
	s := newStream(cancel, func() (*orchv1.JobEvent, error) {
		r, err := rs.Recv()
		return r.GetEvent(), err
	}, jobID)
	s.lastSeq = afterSeq
	return s, nil
}

// Cancel cancels a job. For a job that had already finished it returns its recorded
// outcome.
func (c *Client) Cancel(ctx context.Context, jobID string) (*orchv1.Job, error) {
	r, err := c.rpc.CancelJob(c.Context(ctx), &orchv1.CancelJobRequest{JobId: jobID})
	if err != nil {
		return nil, toError(err)
	}
	return r.GetJob(), nil
}

// GetJob returns a job's current record.
func (c *Client) GetJob(ctx context.Context, jobID string) (*orchv1.Job, error) {
	r, err := c.rpc.GetJob(c.Context(ctx), &orchv1.GetJobRequest{JobId: jobID})
	if err != nil {
		return nil, toError(err)
	}
	return r.GetJob(), nil
}

// ---- Job event streams ---------------------------------------------------------

// Event is one job event with its common payloads lifted out; Raw has the rest.
type Event struct {
	JobID string
	Seq   uint64
	// Text is the generated text of a tokens event ("" otherwise).
	Text string
	// Choice is the choice index of a tokens or end event.
	Choice uint32
	// FinishReason is set on an end event: "stop", "length" or "cancelled".
	FinishReason string
	// Usage is set on an end event (that choice's usage).
	Usage *orchv1.Usage
	Raw   *orchv1.JobEvent
}

// Stream iterates a job's events, like bufio.Scanner:
//
//	for s.Next() { use(s.Event()) }
//	if err := s.Err(); err != nil { ... }
//
// A terminal error event ends the iteration and Err returns it as *Error.
type Stream struct {
	recv    func() (*orchv1.JobEvent, error)
	cancel  context.CancelFunc
	ev      Event
	err     error
	done    bool
	jobID   string
	lastSeq uint64
}

func newStream(cancel context.CancelFunc, recv func() (*orchv1.JobEvent, error), jobID string) *Stream {
	return &Stream{recv: recv, cancel: cancel, jobID: jobID}
}

// Next advances to the next event; false at the end of the stream or on error.
func (s *Stream) Next() bool {
	if s.done {
		return false
	}
	raw, err := s.recv()
	if err != nil {
		s.done = true
		if err != io.EOF {
			s.err = toError(err)
		}
		s.cancel()
		return false
	}
	s.ev = Event{JobID: raw.GetJobId(), Seq: raw.GetSeq(), Raw: raw}
	if s.ev.JobID != "" {
		s.jobID = s.ev.JobID
	}
	if s.ev.Seq > s.lastSeq {
		s.lastSeq = s.ev.Seq
	}
	switch k := raw.GetKind().(type) {
	case *orchv1.JobEvent_Tokens:
		s.ev.Text, s.ev.Choice = k.Tokens.GetText(), k.Tokens.GetChoiceIndex()
	case *orchv1.JobEvent_End:
		s.ev.FinishReason, s.ev.Usage, s.ev.Choice = k.End.GetFinishReason(), k.End.GetUsage(), k.End.GetChoiceIndex()
	case *orchv1.JobEvent_Error:
		s.done = true
		s.err = fromDetail(k.Error)
		s.cancel()
		return false
	}
	return true
}

// Event is the current event (valid after Next returned true).
func (s *Stream) Event() Event { return s.ev }

// Err is the error that ended the stream, nil after a normal end.
func (s *Stream) Err() error { return s.err }

// JobID is the job's id, known once the first event arrived.
func (s *Stream) JobID() string { return s.jobID }

// LastSeq is the highest event sequence number seen: resume with StreamJob(id, LastSeq()).
func (s *Stream) LastSeq() uint64 { return s.lastSeq }

// Close stops the stream (for Generate, this cancels a job that is not detached).
func (s *Stream) Close() {
	s.done = true
	s.cancel()
}

// Result is a whole job's output, as Collect gathers it.
type Result struct {
	JobID string
	// Text per choice index.
	Text         map[uint32]string
	FinishReason map[uint32]string
	Usage        map[uint32]*orchv1.Usage
}

// Collect reads the stream to its end. A divergence event (a retried job whose tokens
// differ from those already sent) cuts the choice's text back to its CharOffset before
// the replacement tokens follow.
func (s *Stream) Collect() (*Result, error) {
	r := &Result{Text: map[uint32]string{}, FinishReason: map[uint32]string{}, Usage: map[uint32]*orchv1.Usage{}}
	for s.Next() {
		ev := s.Event()
		switch ev.Raw.GetKind().(type) {
		case *orchv1.JobEvent_Tokens:
			r.Text[ev.Choice] += ev.Text
		case *orchv1.JobEvent_End:
			r.FinishReason[ev.Choice] = ev.FinishReason
			r.Usage[ev.Choice] = ev.Usage
		case *orchv1.JobEvent_Divergence:
			d := ev.Raw.GetDivergence()
			if text := []rune(r.Text[d.GetChoiceIndex()]); int(d.GetCharOffset()) < len(text) {
				r.Text[d.GetChoiceIndex()] = string(text[:d.GetCharOffset()])
			}
		}
	}
	r.JobID = s.JobID()
	return r, s.Err()
}

// ---- Facts ---------------------------------------------------------------------

// FactFilter selects facts; the zero value watches everything from now on (after
// replaying the retained facts with id > AfterID, which for AfterID 0 is all of them).
type FactFilter struct {
	Kinds   []orchv1.FactKind
	JobID   string
	AfterID uint64
}

// FactWatch delivers facts on C until ctx is cancelled, Close is called or the
// server ends the stream; C is then closed and Err says why.
type FactWatch struct {
	C      <-chan *orchv1.Fact
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	err    error
}

// WatchFacts follows the orchestrator's fact stream.
func (c *Client) WatchFacts(ctx context.Context, f FactFilter) (*FactWatch, error) {
	ctx, cancel := context.WithCancel(c.Context(ctx))
	rs, err := c.rpc.WatchFacts(ctx, &orchv1.WatchFactsRequest{Kinds: f.Kinds, JobId: f.JobID, AfterId: f.AfterID})
	if err != nil {
		cancel()
		return nil, toError(err)
	}
	ch := make(chan *orchv1.Fact, 64)
	w := &FactWatch{C: ch, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer close(ch)
		for {
			r, err := rs.Recv()
			if err != nil {
				if err != io.EOF && ctx.Err() == nil {
					w.mu.Lock()
					w.err = toError(err)
					w.mu.Unlock()
				}
				return
			}
			select {
			case ch <- r.GetFact():
			case <-ctx.Done():
				return
			}
		}
	}()
	return w, nil
}

// Close stops the watch; C is closed soon after.
func (w *FactWatch) Close() {
	w.cancel()
	<-w.done
}

// Err is why the watch ended: nil after Close or ctx cancellation, otherwise the
// stream's error. Meaningful once C is closed.
func (w *FactWatch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// IsTerminalJobFact reports whether a fact ends its job (finished, failed, cancelled).
func IsTerminalJobFact(f *orchv1.Fact) bool {
	switch f.GetKind() {
	case orchv1.FactKind_FACT_KIND_JOB_FINISHED, orchv1.FactKind_FACT_KIND_JOB_FAILED,
		orchv1.FactKind_FACT_KIND_JOB_CANCELLED:
		return true
	}
	return false
}
