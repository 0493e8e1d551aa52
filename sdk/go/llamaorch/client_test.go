package llamaorch

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	orchv1 "llamaorch/gen/go/llama_orch/v1"
)

// fake is an in-process ClientService: model "tiny" streams three events, anything
// else fails the way the orchestrator does (status + google.rpc.ErrorInfo).
type fake struct {
	orchv1.UnimplementedClientServiceServer
	lastAfterSeq chan uint64
	auth         chan string
}

func modelNotFound(model string) error {
	st, err := status.New(codes.NotFound, "unknown model '"+model+"'").WithDetails(
		&errdetails.ErrorInfo{Reason: "MODEL_NOT_FOUND", Domain: Domain,
			Metadata: map[string]string{"param": "model"}})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func events(jobID string) []*orchv1.JobEvent {
	return []*orchv1.JobEvent{
		{JobId: jobID, Seq: 1, Kind: &orchv1.JobEvent_Started{Started: &orchv1.JobStarted{PromptTokens: 3}}},
		{JobId: jobID, Seq: 2, Kind: &orchv1.JobEvent_Tokens{Tokens: &orchv1.JobTokens{Text: "hello"}}},
		{JobId: jobID, Seq: 3, Kind: &orchv1.JobEvent_Tokens{Tokens: &orchv1.JobTokens{Text: " world"}}},
		{JobId: jobID, Seq: 4, Kind: &orchv1.JobEvent_End{End: &orchv1.JobEnd{FinishReason: "length",
			Usage: &orchv1.Usage{PromptTokens: 3, CompletionTokens: 2, TotalTokens: 5}}}},
	}
}

func (f *fake) Generate(req *orchv1.GenerateRequest, s orchv1.ClientService_GenerateServer) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	select {
	case f.auth <- firstOf(md.Get("authorization")):
	default:
	}
	switch req.GetSpec().GetModel() {
	case "tiny":
		for _, ev := range events("job-1") {
			if err := s.Send(&orchv1.GenerateResponse{Event: ev}); err != nil {
				return err
			}
		}
		return nil
	case "diverging": // "héllo" then a retry keeps "hé" and continues differently
		evs := events("job-4")
		div := &orchv1.JobEvent{JobId: "job-4", Seq: 3, Kind: &orchv1.JobEvent_Divergence{
			Divergence: &orchv1.JobDivergence{TokenIndex: 1, CharOffset: 2}}}
		evs[1].GetTokens().Text = "héllo"
		evs[2].GetTokens().Text = "y there"
		for _, ev := range []*orchv1.JobEvent{evs[0], evs[1], div, evs[2], evs[3]} {
			if err := s.Send(&orchv1.GenerateResponse{Event: ev}); err != nil {
				return err
			}
		}
		return nil
	case "crashy":
		return s.Send(&orchv1.GenerateResponse{Event: &orchv1.JobEvent{JobId: "job-2", Seq: 1,
			Kind: &orchv1.JobEvent_Error{Error: &orchv1.ErrorDetail{
				Code: orchv1.ErrorCode_ERROR_CODE_RETRIES_EXHAUSTED, Message: "gave up", Retryable: false}}}})
	}
	return modelNotFound(req.GetSpec().GetModel())
}

func (f *fake) StreamJob(req *orchv1.StreamJobRequest, s orchv1.ClientService_StreamJobServer) error {
	f.lastAfterSeq <- req.GetAfterSeq()
	for _, ev := range events(req.GetJobId()) {
		if ev.Seq > req.GetAfterSeq() {
			if err := s.Send(&orchv1.StreamJobResponse{Event: ev}); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f *fake) Submit(ctx context.Context, req *orchv1.SubmitRequest) (*orchv1.SubmitResponse, error) {
	if req.GetSpec().GetModel() != "tiny" {
		return nil, modelNotFound(req.GetSpec().GetModel())
	}
	return &orchv1.SubmitResponse{Job: &orchv1.Job{JobId: "job-3", Spec: req.GetSpec(),
		IdempotencyKey: req.GetIdempotencyKey()}, Existing: req.GetIdempotencyKey() != ""}, nil
}

func (f *fake) CancelJob(ctx context.Context, req *orchv1.CancelJobRequest) (*orchv1.CancelJobResponse, error) {
	return nil, status.Error(codes.NotFound, "no job "+req.GetJobId()) // no ErrorInfo: fallback code
}

func (f *fake) WatchFacts(req *orchv1.WatchFactsRequest, s orchv1.ClientService_WatchFactsServer) error {
	for id, kind := range []orchv1.FactKind{orchv1.FactKind_FACT_KIND_JOB_ADMITTED, orchv1.FactKind_FACT_KIND_JOB_FINISHED} {
		if err := s.Send(&orchv1.WatchFactsResponse{Fact: &orchv1.Fact{Id: req.GetAfterId() + uint64(id) + 1,
			Kind: kind, JobId: req.GetJobId()}}); err != nil {
			return err
		}
	}
	<-s.Context().Done() // a live stream: only the client ends it
	return nil
}

func firstOf(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func start(t *testing.T, opts ...Option) (*Client, *fake) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	f := &fake{lastAfterSeq: make(chan uint64, 1), auth: make(chan string, 1)}
	orchv1.RegisterClientServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	dialer := func(ctx context.Context, _ string) (net.Conn, error) { return lis.Dial() }
	c, err := Dial("bufnet", append(opts, WithDialOptions(grpc.WithContextDialer(dialer)))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, f
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGenerateStreamsTextFinishAndUsage(t *testing.T) {
	c, f := start(t, WithAPIKey("k1"))
	s, err := c.Generate(testContext(t), "tiny", Prompt("hi"), &Params{MaxTokens: 2, Seed: Uint64(1)})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Collect()
	if err != nil {
		t.Fatal(err)
	}
	if r.Text[0] != "hello world" || r.FinishReason[0] != "length" || r.Usage[0].GetTotalTokens() != 5 {
		t.Fatalf("got %+v", r)
	}
	if r.JobID != "job-1" || s.LastSeq() != 4 {
		t.Fatalf("job %q last seq %d", r.JobID, s.LastSeq())
	}
	if got := <-f.auth; got != "Bearer k1" {
		t.Fatalf("authorization %q", got)
	}
}

func TestErrorInfoReasonIsTheCode(t *testing.T) {
	c, _ := start(t)
	s, err := c.Generate(testContext(t), "nope", Chat(Message{Role: "user", Content: "hi"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Next() {
		t.Fatal("expected no events")
	}
	e, ok := s.Err().(*Error)
	if !ok || e.Code != "MODEL_NOT_FOUND" || e.Param != "model" || e.Status != codes.NotFound {
		t.Fatalf("got %#v", s.Err())
	}
	if _, _, err := c.Submit(testContext(t), "nope", Prompt("x"), nil); CodeOf(err) != "MODEL_NOT_FOUND" {
		t.Fatalf("submit: %v", err)
	}
}

func TestErrorEventEndsTheStream(t *testing.T) {
	c, _ := start(t)
	s, _ := c.Generate(testContext(t), "crashy", Prompt("x"), nil)
	for s.Next() {
	}
	if CodeOf(s.Err()) != "RETRIES_EXHAUSTED" || s.JobID() != "" && s.JobID() != "job-2" {
		t.Fatalf("got %v", s.Err())
	}
}

func TestPlainStatusGetsAFallbackCode(t *testing.T) {
	c, _ := start(t)
	_, err := c.Cancel(testContext(t), "job-x")
	if CodeOf(err) != "NOT_FOUND" {
		t.Fatalf("got %v", err)
	}
}

func TestStreamJobResumesAfterSeq(t *testing.T) {
	c, f := start(t)
	s, err := c.StreamJob(testContext(t), "job-9", 2)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for s.Next() {
		seqs = append(seqs, s.Event().Seq)
	}
	if s.Err() != nil || len(seqs) != 2 || seqs[0] != 3 || <-f.lastAfterSeq != 2 {
		t.Fatalf("seqs %v err %v", seqs, s.Err())
	}
}

func TestSubmitReturnsTheJob(t *testing.T) {
	c, _ := start(t)
	job, existing, err := c.Submit(testContext(t), "tiny", Prompt("x"), &Params{IdempotencyKey: "k"})
	if err != nil || job.GetJobId() != "job-3" || !existing || job.GetSpec().GetPrompt() != "x" {
		t.Fatalf("job %v existing %v err %v", job, existing, err)
	}
}

func TestWatchFactsDeliversAndClosesOnClose(t *testing.T) {
	c, _ := start(t)
	w, err := c.WatchFacts(testContext(t), FactFilter{JobID: "job-1", AfterID: 10})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []orchv1.FactKind
	for f := range w.C {
		kinds = append(kinds, f.GetKind())
		if f.GetId() <= 10 || f.GetJobId() != "job-1" {
			t.Fatalf("fact %v", f)
		}
		if IsTerminalJobFact(f) {
			w.Close()
		}
	}
	if len(kinds) != 2 || w.Err() != nil {
		t.Fatalf("kinds %v err %v", kinds, w.Err())
	}
}

func TestCollectAppliesDivergence(t *testing.T) {
	c, _ := start(t)
	s, err := c.Generate(testContext(t), "diverging", Prompt("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Collect()
	if err != nil || r.Text[0] != "héy there" {
		t.Fatalf("text %q err %v", r.Text[0], err)
	}
}
