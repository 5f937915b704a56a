package main

// The provenance contract. State keys (simple keys, so that range scans work; every
// component is hex, digits or a validated ledger name, and "/" sorts below all of them):
//
//	L/<ledger>/head                      height <TAB> block id <TAB> records so far [<TAB> f1] [<TAB> t1]
//	L/<ledger>/f/<hex digit>             Bloom filter shard over record ids (filter.go)
//	L/<ledger>/tree                      the log tree's compact range (tree.go), when the head says t1
//	L/<ledger>/b/<height:012>            block id <TAB> count <TAB> header, then one line per record body
//	L/<ledger>/bid/<block id>            height
//	L/<ledger>/id/<record id>            height <TAB> position
//	L/<ledger>/run/<H(run id)>/<height:012>                positions in that block, comma-separated
//	L/<ledger>/xp/<in|out>/<bucket of H(path)>/<height:012>      lines: H(path) <TAB> position <TAB> digest
//	L/<ledger>/xd/<in|out>/<digest[:1]>/<height:012>       lines: digest <TAB> position
//
// Every PutState and GetState is a round trip between this process and the peer (Fabric
// 2.5 has no batched state calls), and that, not hashing, is what an append costs. So a
// record costs one (its id key, written); its duplicate check reads the id key only when
// the ledger's Bloom filter says it may be stored (filter.go); bodies travel in the
// block's one key; artifact indexes are grouped per block into hash buckets, one key
// per bucket touched. A path look-up reads one bucket per block; digest-only look-ups,
// which the core rarely makes, read a 16th of the digest index.
//
// Every append reads and rewrites the head key, so two transactions that build on the same
// head cannot both commit: Fabric's MVCC validation marks the later one invalid
// (MVCC_READ_CONFLICT), and the client rebuilds its block on the new head.

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/hyperledger/fabric-chaincode-go/v2/shim"
	"github.com/hyperledger/fabric-contract-api-go/v2/contractapi"
)

var ledgerName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}$`)
var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// LedgerContract is the chaincode's one contract.
type LedgerContract struct {
	contractapi.Contract
}

type header struct {
	V          int     `json:"v"`
	Height     int64   `json:"height"`
	Prev       *string `json:"prev"`
	MerkleRoot string  `json:"merkle_root"`
	Time       string  `json:"time"`
	Count      int     `json:"count"`
}

// recordKeys is what the indexes need from a record. Artifact entries stay raw JSON (not
// map[string]any): decoding builds no values for their other fields, and the "blake3" key
// is matched exactly (a struct field would also match "BLAKE3").
type recordKeys struct {
	V       int                      `json:"v"`
	RunID   string                   `json:"run_id"`
	Inputs  map[string]artifactEntry `json:"inputs"`
	Outputs map[string]artifactEntry `json:"outputs"`
}

type artifactEntry map[string]json.RawMessage

// digest is the entry's "blake3" value, or "" unless it is a plain string of 64 hex digits
// (as canonical JSON writes a digest: no escapes).
func (entry artifactEntry) digest() string {
	raw := entry["blake3"]
	if len(raw) != 66 || raw[0] != '"' || raw[65] != '"' || !isHex64(string(raw[1:65])) {
		return ""
	}
	return string(raw[1:65])
}

type chainHead struct {
	Height  int64
	ID      string
	Records int64
	Filter  bool // the ledger keeps the id filter (every ledger begun by this chaincode)
	Tree    bool // the ledger keeps the log tree, current with the head (tree.go)
}

func (h *chainHead) encode() string {
	value := fmt.Sprintf("%d\t%s\t%d", h.Height, h.ID, h.Records)
	if h.Filter {
		value += "\t" + filterMark
	}
	if h.Tree {
		value += "\t" + treeMark
	}
	return value
}

func prefix(ledger string) (string, error) {
	if !ledgerName.MatchString(ledger) {
		return "", fmt.Errorf("bad ledger name %q: use letters, digits, '.', '_' and '-'", ledger)
	}
	return "L/" + ledger + "/", nil
}

func place(height int64, position int) string {
	return fmt.Sprintf("%012d/%06d", height, position)
}

func conflict(format string, args ...any) error {
	return fmt.Errorf("CONFLICT: "+format, args...)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("INVALID: "+format, args...)
}

func readHead(ctx contractapi.TransactionContextInterface, p string) (*chainHead, error) {
	raw, err := ctx.GetStub().GetState(p + "head")
	if err != nil || raw == nil {
		return nil, err
	}
	return parseHead(raw)
}

func parseHead(raw []byte) (*chainHead, error) {
	fields := strings.Split(string(raw), "\t")
	if len(fields) < 3 || len(fields) > 5 {
		return nil, fmt.Errorf("corrupt head entry %q", raw)
	}
	height, _ := strconv.ParseInt(fields[0], 10, 64)
	records, _ := strconv.ParseInt(fields[2], 10, 64)
	head := &chainHead{Height: height, ID: fields[1], Records: records}
	for _, mark := range fields[3:] { // each mark once, in this order
		switch {
		case mark == filterMark && !head.Filter && !head.Tree:
			head.Filter = true
		case mark == treeMark && !head.Tree:
			head.Tree = true
		default:
			return nil, fmt.Errorf("corrupt head entry %q", raw)
		}
	}
	return head, nil
}

// Append stores consecutive blocks on the current head in one transaction, all or nothing.
// Blocks already stored under the same id are skipped, so a retried append is harmless.
func (c *LedgerContract) Append(ctx contractapi.TransactionContextInterface, ledger string, payload string) (string, error) {
	if _, err := mayWrite(ctx); err != nil {
		return "", err
	}
	p, err := prefix(ledger)
	if err != nil {
		return "", err
	}
	blocks, err := decodeBlocks(payload)
	if err != nil {
		return "", invalid("%v", err)
	}
	stub := ctx.GetStub()
	head, err := readHead(ctx, p)
	if err != nil {
		return "", err
	}
	next, prevID, total := int64(0), "", int64(0)
	var filter *idFilter
	if head == nil || head.Filter {
		filter = newIDFilter(stub, p)
	}
	var tree *logTree // nil: a ledger begun by an older chaincode, until BuildTree has run
	if head == nil {
		tree = &logTree{}
	} else if head.Tree {
		if tree, err = readTree(ctx, p); err != nil {
			return "", err
		}
		if tree == nil || tree.Blocks != head.Height+1 || tree.Size != head.Records {
			return "", fmt.Errorf("the log tree does not cover the head (block %d)", head.Height)
		}
	}
	if head != nil {
		next, prevID, total = head.Height+1, head.ID, head.Records
	}
	seen := map[string]bool{}
	stored := 0
	for _, block := range blocks {
		if block.Height < next {
			existing, err := stub.GetState(p + "b/" + fmt.Sprintf("%012d", block.Height))
			if err != nil {
				return "", err
			}
			if existing != nil && strings.HasPrefix(string(existing), block.ID+"\t") {
				continue // already stored: idempotent re-append
			}
			return "", conflict("height %d is taken by another block", block.Height)
		}
		if block.Height != next {
			return "", conflict("block %d does not follow the head (next height is %d)", block.Height, next)
		}
		if err := checkBlock(block, prevID); err != nil {
			return "", err
		}
		index := newBlockIndex()
		var body strings.Builder
		fmt.Fprintf(&body, "%s\t%d\t%s\n", block.ID, len(block.Records), block.Header)
		for position, record := range block.Records {
			if seen[record.ID] {
				return "", conflict("record %.16s appears twice in this append", record.ID)
			}
			seen[record.ID] = true
			if err := refuseStored(stub, p, filter, record.ID); err != nil {
				return "", err
			}
			if err := stub.PutState(p+"id/"+record.ID, []byte(fmt.Sprintf("%d\t%d", block.Height, position))); err != nil {
				return "", err
			}
			if filter != nil {
				if err := filter.add(record.ID); err != nil {
					return "", err
				}
			}
			if err := index.add(record, position); err != nil {
				return "", err
			}
			body.WriteString(record.Body)
			body.WriteByte('\n')
		}
		h := fmt.Sprintf("%012d", block.Height)
		if err := stub.PutState(p+"b/"+h, []byte(body.String())); err != nil {
			return "", err
		}
		if err := stub.PutState(p+"bid/"+block.ID, []byte(strconv.FormatInt(block.Height, 10))); err != nil {
			return "", err
		}
		if err := index.store(ctx, p, h); err != nil {
			return "", err
		}
		if tree != nil {
			ids := make([]string, len(block.Records))
			for i, record := range block.Records {
				ids[i] = record.ID
			}
			if err := tree.appendIDs(ids); err != nil {
				return "", invalid("block %d: %v", block.Height, err)
			}
			tree.Blocks++
		}
		next, prevID, total = block.Height+1, block.ID, total+int64(len(block.Records))
		stored++
	}
	if stored > 0 {
		value := chainHead{Height: next - 1, ID: prevID, Records: total, Filter: filter != nil, Tree: tree != nil}
		if filter != nil {
			if err := filter.store(); err != nil {
				return "", err
			}
		}
		if tree != nil {
			if err := stub.PutState(p+"tree", []byte(tree.encode())); err != nil {
				return "", err
			}
		}
		if err := stub.PutState(p+"head", []byte(value.encode())); err != nil {
			return "", err
		}
	}
	return strconv.Itoa(stored), nil
}

// refuseStored fails when the record is already stored; the filter, when the ledger has
// one, spares the id read for records it has certainly never seen.
func refuseStored(stub shim.ChaincodeStubInterface, p string, filter *idFilter, recordID string) error {
	if filter != nil {
		maybe, err := filter.mayHold(recordID)
		if err != nil || !maybe {
			return err
		}
	}
	taken, err := stub.GetState(p + "id/" + recordID)
	if err != nil {
		return err
	}
	if taken != nil {
		return conflict("record %.16s is already stored", recordID)
	}
	return nil
}

// checkBlock recomputes what the core computed: the block id from the header bytes, each
// record id from the record bytes, the Merkle root over the ids, the count and the link.
func checkBlock(block wireBlock, prevID string) error {
	if !isHex64(block.ID) || digestHex([]byte(block.Header)) != block.ID {
		return invalid("block %d: header does not hash to the block id", block.Height)
	}
	var h header
	if err := json.Unmarshal([]byte(block.Header), &h); err != nil {
		return invalid("block %d: header is not JSON: %v", block.Height, err)
	}
	if h.V != 1 || h.Height != block.Height {
		return invalid("block %d: header says version %d, height %d", block.Height, h.V, h.Height)
	}
	if (h.Prev == nil) != (prevID == "") || (h.Prev != nil && *h.Prev != prevID) {
		return conflict("block %d: previous-block link does not name the head", block.Height)
	}
	if h.Count != len(block.Records) {
		return invalid("block %d: header counts %d records, %d sent", block.Height, h.Count, len(block.Records))
	}
	ids := make([]string, len(block.Records))
	for i, record := range block.Records {
		if !isHex64(record.ID) || digestHex([]byte(record.Body)) != record.ID {
			return invalid("block %d: record %d does not hash to its id %.16s", block.Height, i, record.ID)
		}
		ids[i] = record.ID
	}
	root, err := merkleRoot(ids)
	if err != nil {
		return invalid("block %d: %v", block.Height, err)
	}
	if root != h.MerkleRoot {
		return invalid("block %d: Merkle root does not match its records", block.Height)
	}
	return nil
}

// pathBucket spreads paths over 64 buckets: one key per bucket touched per block, and a
// path look-up reads one 64th of each block's path index.
func pathBucket(pathHash string) string {
	return fmt.Sprintf("%02x", (fromHex(pathHash[0])<<4|fromHex(pathHash[1]))&0x3f)
}

// isHex64 is hex64.MatchString without the regexp machinery (it runs for every artifact).
func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func fromHex(c byte) int {
	if c >= 'a' {
		return int(c-'a') + 10
	}
	return int(c - '0')
}

// blockIndex gathers one block's index entries by key, to write each key once.
type blockIndex struct {
	entries map[string]*strings.Builder // key suffix (before the height) -> value
}

func newBlockIndex() *blockIndex {
	return &blockIndex{entries: map[string]*strings.Builder{}}
}

func (ix *blockIndex) line(key string, format string, args ...any) {
	sb := ix.entries[key]
	if sb == nil {
		sb = &strings.Builder{}
		ix.entries[key] = sb
	}
	fmt.Fprintf(sb, format, args...)
}

func (ix *blockIndex) add(record wireRecord, position int) error {
	var keys recordKeys
	if err := json.Unmarshal([]byte(record.Body), &keys); err != nil {
		return invalid("record %.16s is not JSON: %v", record.ID, err)
	}
	if keys.V != 1 {
		return invalid("record %.16s has unsupported version %d", record.ID, keys.V)
	}
	runKey := "run/" + digestHex([]byte(keys.RunID)) + "/"
	if ix.entries[runKey] != nil {
		ix.line(runKey, ",")
	}
	ix.line(runKey, "%d", position)
	// Go randomises map order; both orgs' peers must write identical values, so sort.
	for _, side := range []struct {
		role      string
		artifacts map[string]artifactEntry
	}{{"in", keys.Inputs}, {"out", keys.Outputs}} {
		role, artifacts := side.role, side.artifacts
		paths := make([]string, 0, len(artifacts))
		for path := range artifacts {
			paths = append(paths, path)
		}
		sort.Strings(paths)
		for _, path := range paths {
			digest := artifacts[path].digest()
			if digest == "" {
				return invalid("record %.16s: %s artifact %q has no valid digest", record.ID, role, path)
			}
			pathHash := digestHex([]byte(path))
			ix.line("xp/"+role+"/"+pathBucket(pathHash)+"/", "%s\t%d\t%s\n", pathHash, position, digest)
			ix.line("xd/"+role+"/"+digest[:1]+"/", "%s\t%d\n", digest, position)
		}
	}
	return nil
}

func (ix *blockIndex) store(ctx contractapi.TransactionContextInterface, p string, height string) error {
	for key, value := range ix.entries {
		if err := ctx.GetStub().PutState(p+key+height, []byte(value.String())); err != nil {
			return err
		}
	}
	return nil
}
