package main

// Read-only functions (called through the Gateway's Evaluate), and client registration.

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/hyperledger/fabric-contract-api-go/v2/contractapi"
)

// rangeEnd is the exclusive end of a scan over every key that starts with p, where p ends
// in "/" and what follows it is hex, digits or "/" (all of which sort below "~").
func rangeEnd(p string) string { return p + "~" }

// Head answers "height <TAB> block id <TAB> record count", or "" for an empty ledger.
func (c *LedgerContract) Head(ctx contractapi.TransactionContextInterface, ledger string) (string, error) {
	p, err := readablePrefix(ctx, ledger)
	if err != nil {
		return "", err
	}
	head, err := readHead(ctx, p)
	if err != nil || head == nil {
		return "", err
	}
	return fmt.Sprintf("%d\t%s\t%d", head.Height, head.ID, head.Records), nil
}

// Blocks returns blocks start <= height < stop in the wire format, stopping early (after at
// least one block) once maxBytes are reached; the client asks again from where it stopped.
// So it needs no pages (ranges.go): a peer's query limit only stops it early as well.
func (c *LedgerContract) Blocks(ctx contractapi.TransactionContextInterface, ledger string, start int, stop int, maxBytes int) (string, error) {
	p, err := readablePrefix(ctx, ledger)
	if err != nil {
		return "", err
	}
	stub := ctx.GetStub()
	headers, err := stub.GetStateByRange(p+"b/"+fmt.Sprintf("%012d", start), p+"b/"+fmt.Sprintf("%012d", stop))
	if err != nil {
		return "", err
	}
	defer headers.Close()
	var sb strings.Builder
	sb.WriteString(wireMagic + "\n")
	for headers.HasNext() && (sb.Len() < maxBytes || sb.Len() == len(wireMagic)+1) {
		kv, err := headers.Next()
		if err != nil {
			return "", err
		}
		height, _ := strconv.ParseInt(kv.Key[strings.LastIndexByte(kv.Key, '/')+1:], 10, 64)
		block, err := parseStoredBlock(height, kv.Value)
		if err != nil {
			return "", err
		}
		encodeBlock(&sb, block)
	}
	return sb.String(), nil
}

// parseStoredBlock reads a "b/<height>" value: "id <TAB> count <TAB> header", then bodies.
func parseStoredBlock(height int64, value []byte) (wireBlock, error) {
	lines := strings.Split(strings.TrimSuffix(string(value), "\n"), "\n")
	first := strings.SplitN(lines[0], "\t", 3)
	if len(first) != 3 {
		return wireBlock{}, fmt.Errorf("corrupt block entry at height %d", height)
	}
	count, _ := strconv.Atoi(first[1])
	if len(lines)-1 != count {
		return wireBlock{}, fmt.Errorf("block %d holds %d records, its entry says %d", height, len(lines)-1, count)
	}
	block := wireBlock{Height: height, ID: first[0], Header: first[2], Records: make([]wireRecord, count)}
	for i, body := range lines[1:] {
		block.Records[i] = wireRecord{ID: digestHex([]byte(body)), Body: body}
	}
	return block, nil
}

// BlockByID returns one block (wire format) by its id, or "" when there is none.
func (c *LedgerContract) BlockByID(ctx contractapi.TransactionContextInterface, ledger string, blockID string) (string, error) {
	p, err := readablePrefix(ctx, ledger)
	if err != nil {
		return "", err
	}
	raw, err := ctx.GetStub().GetState(p + "bid/" + blockID)
	if err != nil || raw == nil {
		return "", err
	}
	height, _ := strconv.Atoi(string(raw))
	return c.Blocks(ctx, ledger, height, height+1, 1)
}

// Known returns which of the comma-separated record ids are stored (comma-separated).
func (c *LedgerContract) Known(ctx contractapi.TransactionContextInterface, ledger string, ids string) (string, error) {
	p, err := readablePrefix(ctx, ledger)
	if err != nil {
		return "", err
	}
	stub := ctx.GetStub()
	head, err := readHead(ctx, p)
	if err != nil || head == nil {
		return "", err // an empty ledger knows nothing
	}
	var filter *idFilter
	if head.Filter {
		filter = newIDFilter(stub, p)
	}
	var found []string
	for _, id := range strings.Split(ids, ",") {
		if id == "" {
			continue
		}
		if filter != nil {
			maybe, err := filter.mayHold(id)
			if err != nil {
				return "", err
			}
			if !maybe {
				continue
			}
		}
		raw, err := stub.GetState(p + "id/" + id)
		if err != nil {
			return "", err
		}
		if raw != nil {
			found = append(found, id)
		}
	}
	return strings.Join(found, ","), nil
}

// Find returns records with an input ("in") or output ("out") at path and/or with digest;
// with neither, every record that has any artifact in that role. Ledger order.
func (c *LedgerContract) Find(ctx contractapi.TransactionContextInterface, ledger string, role string, path string, digest string) (string, error) {
	p, err := readablePrefix(ctx, ledger)
	if err != nil {
		return "", err
	}
	if role != "in" && role != "out" {
		return "", invalid("role must be \"in\" or \"out\", got %q", role)
	}
	var places []string
	switch {
	case path != "":
		pathHash := digestHex([]byte(path))
		places, err = scanIndex(ctx, p+"xp/"+role+"/"+pathBucket(pathHash)+"/", func(fields []string) bool {
			return len(fields) == 3 && fields[0] == pathHash && (digest == "" || fields[2] == digest)
		})
	case digest != "":
		if !hex64.MatchString(digest) {
			return "", nil // no record has an artifact with a malformed digest
		}
		places, err = scanIndex(ctx, p+"xd/"+role+"/"+digest[:1]+"/", func(fields []string) bool {
			return len(fields) == 2 && fields[0] == digest
		})
	default:
		places, err = scanIndex(ctx, p+"xp/"+role+"/", func([]string) bool { return true })
	}
	if err != nil {
		return "", err
	}
	return locate(ctx, p, places)
}

// ByRun returns the records of one workflow run, in ledger order.
func (c *LedgerContract) ByRun(ctx contractapi.TransactionContextInterface, ledger string, runID string) (string, error) {
	p, err := readablePrefix(ctx, ledger)
	if err != nil {
		return "", err
	}
	scan := p + "run/" + digestHex([]byte(runID)) + "/"
	var places []string
	err = eachInRange(ctx, scan, rangeEnd(scan), func(key string, value []byte) (bool, error) {
		height, _ := strconv.ParseInt(key[len(scan):], 10, 64)
		for _, position := range strings.Split(string(value), ",") {
			pos, _ := strconv.Atoi(position)
			places = append(places, place(height, pos))
		}
		return true, nil
	})
	if err != nil {
		return "", err
	}
	return locate(ctx, p, places)
}

// ByIDPrefix returns up to limit records whose id starts with the hex prefix.
func (c *LedgerContract) ByIDPrefix(ctx contractapi.TransactionContextInterface, ledger string, idPrefix string, limit int) (string, error) {
	p, err := readablePrefix(ctx, ledger)
	if err != nil {
		return "", err
	}
	if strings.ContainsAny(idPrefix, "/~") {
		return "", invalid("record id prefixes are hex digits")
	}
	var places []string
	err = eachInRange(ctx, p+"id/"+idPrefix, rangeEnd(p+"id/"+idPrefix), func(_ string, value []byte) (bool, error) {
		if len(places) >= limit {
			return false, nil
		}
		fields := strings.Split(string(value), "\t")
		h, _ := strconv.ParseInt(fields[0], 10, 64)
		pos, _ := strconv.Atoi(fields[1])
		places = append(places, place(h, pos))
		return len(places) < limit, nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(places)
	return locate(ctx, p, places)
}

// scanIndex reads every per-block bucket under scan (keys end in "/<height:012>"), keeps
// the lines whose tab-separated fields pass keep (the position is the second field), and
// returns "<height>/<position>" places, de-duplicated, in ledger order.
func scanIndex(ctx contractapi.TransactionContextInterface, scan string, keep func([]string) bool) ([]string, error) {
	unique := map[string]bool{}
	err := eachInRange(ctx, scan, rangeEnd(scan), func(key string, value []byte) (bool, error) {
		height, _ := strconv.ParseInt(key[strings.LastIndexByte(key, '/')+1:], 10, 64)
		for _, line := range strings.Split(strings.TrimSuffix(string(value), "\n"), "\n") {
			fields := strings.Split(line, "\t")
			if len(fields) >= 2 && keep(fields) {
				pos, _ := strconv.Atoi(fields[1])
				unique[place(height, pos)] = true
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	places := make([]string, 0, len(unique))
	for at := range unique {
		places = append(places, at)
	}
	sort.Strings(places) // zero-padded, so string order is ledger order
	return places, nil
}

// locate answers records at "<height:012>/<position:06>" places (sorted), reading each
// block's entry once.
func locate(ctx contractapi.TransactionContextInterface, p string, places []string) (string, error) {
	items := make([]located, 0, len(places))
	var current wireBlock
	loaded := int64(-1)
	for _, at := range places {
		height, _ := strconv.ParseInt(at[:12], 10, 64)
		position, _ := strconv.Atoi(at[13:])
		if height != loaded {
			value, err := ctx.GetStub().GetState(p + "b/" + at[:12])
			if err != nil {
				return "", err
			}
			if value == nil {
				return "", fmt.Errorf("index names block %d, which is missing", height)
			}
			if current, err = parseStoredBlock(height, value); err != nil {
				return "", err
			}
			loaded = height
		}
		if position >= len(current.Records) {
			return "", fmt.Errorf("index names record %s, outside its block", at)
		}
		record := current.Records[position]
		items = append(items, located{Height: height, Position: position, ID: record.ID, Body: record.Body})
	}
	return encodeLocated(items), nil
}

// RegisterClient lets an admin give a client of its own MSP a role (provider or user), for
// certificates issued without a lineage.role attribute. This is the admin's one write.
func (c *LedgerContract) RegisterClient(ctx contractapi.TransactionContextInterface, clientID string, role string) error {
	who, err := identify(ctx)
	if err != nil {
		return err
	}
	if who.Role != roleAdmin {
		return fmt.Errorf("ACCESS DENIED: %s may not register clients; only an admin may", who.describe())
	}
	if role != roleProvider && role != roleUser {
		return invalid("a registered client's role is provider or user, not %q", role)
	}
	return ctx.GetStub().PutState(registryKey(who.MSPID, clientID), []byte(role))
}

// WhoAmI answers the caller's MSP, client id and role, so an operator can check an identity.
func (c *LedgerContract) WhoAmI(ctx contractapi.TransactionContextInterface) (string, error) {
	who, err := identify(ctx)
	if err != nil {
		return "", err
	}
	return who.MSPID + "\t" + who.ID + "\t" + who.Role, nil
}
