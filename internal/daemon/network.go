package daemon

import (
	"net/http"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/network"
)

// nets returns the network manager, or answers 503 when flickd runs
// without networking.
func (s *Server) nets(w http.ResponseWriter) *network.Manager {
	if s.networks == nil {
		writeError(w, errdefs.Unavailable("this flickd runs without networking (--no-network)"))
	}
	return s.networks
}

func (s *Server) networkList(w http.ResponseWriter, r *http.Request) {
	n := s.nets(w)
	if n == nil {
		return
	}
	writeJSON(w, http.StatusOK, n.List(r.Context()))
}

func (s *Server) networkCreate(w http.ResponseWriter, r *http.Request) {
	n := s.nets(w)
	if n == nil {
		return
	}
	var req api.NetworkCreateRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	net, err := n.Create(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, net)
}

func (s *Server) networkInspect(w http.ResponseWriter, r *http.Request) {
	n := s.nets(w)
	if n == nil {
		return
	}
	net, err := n.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, net)
}

func (s *Server) networkRemove(w http.ResponseWriter, r *http.Request) {
	n := s.nets(w)
	if n == nil {
		return
	}
	if err := n.Remove(r.Context(), r.PathValue("name")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
