// gpuallocator-oracle runs NVIDIA go-gpuallocator's best-effort policy, the code the NVIDIA
// device plugin calls from GetPreferredAllocation, on boards described as JSON, so that
// kvsched's Python port (topology/deviceplugin.py) can be checked against the real thing.
//
// It is built by hack/gpuallocator/build.sh inside a throwaway wrapper module that requires
// github.com/NVIDIA/go-gpuallocator at the version the device plugin pins. No NVML is needed:
// the policy only reads Device.Index and Device.Links, so Devices are built directly.
//
// Protocol: one JSON request per stdin line, one JSON reply per stdout line, in order.
//
//	request:  {"id": any, "links": [[[t, ...], ...], ...], "available": [i, ...],
//	           "required": [i, ...], "size": k}
//	          links[i][j] lists the P2PLinkType numbers of the pair (i, j): 0 unknown,
//	          1 CrossCPU (SYS), 2 SameCPU (NODE), 3 HostBridge (PHB), 4 MultiSwitch (PXB),
//	          5 SingleSwitch (PIX), 6 SameBoard, 7..24 one..eighteen NVLinks.
//	          Instead of "links", "scores" (an n x n matrix of pair scores) may be given; a
//	          score s becomes the link types s%100/10 and 6+s/100 (when s >= 100).
//	reply:    {"id": any, "allocation": [i, ...]} in the order Allocate returns the devices,
//	          with -1 for a nil (padding) entry; or {"id": any, "error": "..."}.
//
// A request is answered even when the library panics (the panic text is the error).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"github.com/NVIDIA/go-gpuallocator/gpuallocator"
)

// The link type lives in an internal package, so it cannot be named here; a table of
// P2PLinks whose Type fields are set from untyped constants carries every value instead.
var linkTypes = []gpuallocator.P2PLink{
	{Type: 0}, {Type: 1}, {Type: 2}, {Type: 3}, {Type: 4}, {Type: 5}, {Type: 6},
	{Type: 7}, {Type: 8}, {Type: 9}, {Type: 10}, {Type: 11}, {Type: 12}, {Type: 13},
	{Type: 14}, {Type: 15}, {Type: 16}, {Type: 17}, {Type: 18}, {Type: 19}, {Type: 20},
	{Type: 21}, {Type: 22}, {Type: 23}, {Type: 24},
}

type request struct {
	ID        json.RawMessage `json:"id,omitempty"`
	Links     [][][]int       `json:"links"`
	Scores    [][]int         `json:"scores"`
	Available []int           `json:"available"`
	Required  []int           `json:"required"`
	Size      int             `json:"size"`
}

type reply struct {
	ID         json.RawMessage `json:"id,omitempty"`
	Allocation []int           `json:"allocation"`
	Error      string          `json:"error,omitempty"`
}

func linksFromScores(scores [][]int) ([][][]int, error) {
	out := make([][][]int, len(scores))
	for i, row := range scores {
		if len(row) != len(scores) {
			return nil, fmt.Errorf("scores row %d has %d entries, want %d", i, len(row), len(scores))
		}
		out[i] = make([][]int, len(row))
		for j, s := range row {
			if i == j || s == 0 {
				continue
			}
			if s < 0 || s%10 != 0 || s/100 > 18 {
				return nil, fmt.Errorf("score %d of pair (%d, %d) is not a sum of link scores", s, i, j)
			}
			if pcie := s % 100 / 10; pcie != 0 {
				out[i][j] = append(out[i][j], pcie)
			}
			if nv := s / 100; nv != 0 {
				out[i][j] = append(out[i][j], 6+nv)
			}
		}
	}
	return out, nil
}

func devicesFrom(links [][][]int) ([]*gpuallocator.Device, error) {
	n := len(links)
	devices := make([]*gpuallocator.Device, n)
	for i := range devices {
		devices[i] = &gpuallocator.Device{Index: i, Links: map[int][]gpuallocator.P2PLink{}}
	}
	for i, row := range links {
		if len(row) != n {
			return nil, fmt.Errorf("links row %d has %d entries, want %d", i, len(row), n)
		}
		for j, types := range row {
			if i == j {
				continue
			}
			for _, t := range types {
				if t < 0 || t >= len(linkTypes) {
					return nil, fmt.Errorf("link type %d of pair (%d, %d) out of range", t, i, j)
				}
				link := linkTypes[t]
				link.GPU = devices[j]
				devices[i].Links[j] = append(devices[i].Links[j], link)
			}
		}
	}
	return devices, nil
}

func pick(devices []*gpuallocator.Device, indices []int, what string) ([]*gpuallocator.Device, error) {
	out := make([]*gpuallocator.Device, 0, len(indices))
	for _, i := range indices {
		if i < 0 || i >= len(devices) {
			return nil, fmt.Errorf("%s index %d out of range for %d devices", what, i, len(devices))
		}
		out = append(out, devices[i])
	}
	return out, nil
}

func answer(req *request) (rep reply) {
	rep.ID = req.ID
	defer func() {
		if r := recover(); r != nil {
			rep.Allocation = nil
			rep.Error = fmt.Sprintf("panic: %v", r)
		}
	}()
	links := req.Links
	if links == nil && req.Scores != nil {
		var err error
		if links, err = linksFromScores(req.Scores); err != nil {
			rep.Error = err.Error()
			return rep
		}
	}
	devices, err := devicesFrom(links)
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	available, err := pick(devices, req.Available, "available")
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	required, err := pick(devices, req.Required, "required")
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	chosen := gpuallocator.NewBestEffortPolicy().Allocate(available, required, req.Size)
	rep.Allocation = make([]int, 0, len(chosen))
	for _, d := range chosen {
		if d == nil {
			rep.Allocation = append(rep.Allocation, -1)
		} else {
			rep.Allocation = append(rep.Allocation, d.Index)
		}
	}
	return rep
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 1<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	for in.Scan() {
		line := in.Bytes()
		if len(line) == 0 {
			continue
		}
		var req request
		var rep reply
		if err := json.Unmarshal(line, &req); err != nil {
			rep = reply{Error: fmt.Sprintf("bad request: %v", err)}
		} else {
			rep = answer(&req)
		}
		if err := enc.Encode(&rep); err != nil {
			fmt.Fprintf(os.Stderr, "gpuallocator-oracle: write: %v\n", err)
			os.Exit(1)
		}
		// Flush per reply: the caller feeds one line and waits for its answer.
		if err := out.Flush(); err != nil {
			fmt.Fprintf(os.Stderr, "gpuallocator-oracle: write: %v\n", err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "gpuallocator-oracle: read: %v\n", err)
		os.Exit(1)
	}
}
