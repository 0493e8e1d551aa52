package llamaorch

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	orchv1 "llamaorch/gen/go/llama_orch/v1"
)

// Domain is the google.rpc.ErrorInfo domain of the orchestrator's errors.
const Domain = "llama-orch"

// Error is a failure with a stable code.
type Error struct {
	// Code is the stable code string of errors.proto: the ErrorCode name without the
	// ERROR_CODE_ prefix, e.g. "MODEL_NOT_FOUND".
	Code    string
	Message string
	// Param is the request field at fault, when known ("temperature").
	Param string
	// Retryable is set for errors from a job's event stream (ErrorDetail.retryable).
	Retryable bool
	// Status is the gRPC status code (codes.OK for errors from a stream event).
	Status codes.Code
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code
	}
	return e.Code + ": " + e.Message
}

// Is matches another *Error by code, so errors.Is(err, &Error{Code: "NOT_FOUND"}) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// CodeOf is the stable code of err ("" for nil, "INTERNAL" for errors of unknown
// origin).
func CodeOf(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return toError(err).Code
}

// CodeName turns an ErrorCode into its stable string ("MODEL_NOT_FOUND").
func CodeName(c orchv1.ErrorCode) string {
	name, ok := orchv1.ErrorCode_name[int32(c)]
	if !ok || c == orchv1.ErrorCode_ERROR_CODE_UNSPECIFIED {
		return "INTERNAL"
	}
	return strings.TrimPrefix(name, "ERROR_CODE_")
}

func fromDetail(d *orchv1.ErrorDetail) *Error {
	return &Error{Code: CodeName(d.GetCode()), Message: d.GetMessage(), Param: d.GetParam(),
		Retryable: d.GetRetryable()}
}

// Plain gRPC failures (no ErrorInfo: transport errors, deadlines) get a code as the
// orchestrator's Python client assigns them (common/errors.py).
var fallback = map[codes.Code]string{
	codes.Unavailable:       "UNAVAILABLE",
	codes.DeadlineExceeded:  "DEADLINE_EXCEEDED",
	codes.Canceled:          "CANCELLED",
	codes.NotFound:          "NOT_FOUND",
	codes.Unauthenticated:   "UNAUTHENTICATED",
	codes.InvalidArgument:   "INVALID_ARGUMENT",
	codes.ResourceExhausted: "RATE_LIMITED",
	codes.AlreadyExists:     "IDEMPOTENCY_CONFLICT",
	codes.OutOfRange:        "RESUME_OUT_OF_RANGE",
	codes.PermissionDenied:  "PERMISSION_DENIED",
}

// toError maps any error from a gRPC call to *Error, reading the stable code from
// the status's google.rpc.ErrorInfo detail when there is one.
func toError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.Canceled) {
		return &Error{Code: "CANCELLED", Message: err.Error(), Status: codes.Canceled}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Code: "DEADLINE_EXCEEDED", Message: err.Error(), Status: codes.DeadlineExceeded}
	}
	st, ok := status.FromError(err)
	if !ok {
		return &Error{Code: "INTERNAL", Message: err.Error(), Status: codes.Unknown}
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain && info.GetReason() != "" {
			return &Error{Code: info.GetReason(), Message: st.Message(),
				Param: info.GetMetadata()["param"], Status: st.Code()}
		}
	}
	code, ok := fallback[st.Code()]
	if !ok {
		code = "INTERNAL"
	}
	msg := st.Message()
	if msg == "" {
		msg = st.Code().String()
	}
	return &Error{Code: code, Message: msg, Status: st.Code()}
}
