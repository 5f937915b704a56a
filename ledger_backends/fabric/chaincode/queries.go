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
	if _, err := mayRead(ctx); err != nil {
		return "", err
	}
	p, err := prefix(ledger)
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
func (c *LedgerContract) Blocks(ctx contractapi.TransactionContextInterface, ledger string, start int, stop int, maxBytes int) (string, error) {
	if _, err := mayRead(ctx); err != nil {
		return "", err
	}
	p, err := prefix(ledger)
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
		fields := strings.SplitN(string(kv.Value), "\t", 3)
		if len(fields) != 3 {
			return "", fmt.Errorf("corrupt block entry at height %d", height)
		}
		block := wireBlock{Height: height, ID: fields[0], Header: fields[2]}
		records, err := blockRecords(ctx, p, height)
		if err != nil {
			return "", err
		}
		block.Records = records
		encodeBlock(&sb, block)
	}
	return sb.String(), nil
}

func blockRecords(ctx contractapi.TransactionContextInterface, p string, height int64) ([]wireRecord, error) {
	h := fmt.Sprintf("%012d/", height)
	it, err := ctx.GetStub().GetStateByRange(p+"r/"+h, rangeEnd(p+"r/"+h))
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var records []wireRecord
	for it.HasNext() {
		kv, err := it.Next()
		if err != nil {
			return nil, err
		}
		records = append(records, wireRecord{ID: digestHex(kv.Value), Body: string(kv.Value)})
	}
	return records, nil
}

// BlockByID returns one block (wire format) by its id, or "" when there is none.
func (c *LedgerContract) BlockByID(ctx contractapi.TransactionContextInterface, ledger string, blockID string) (string, error) {
	if _, err := mayRead(ctx); err != nil {
		return "", err
	}
	p, err := prefix(ledger)
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
	if _, err := mayRead(ctx); err != nil {
		return "", err
	}
	p, err := prefix(ledger)
	if err != nil {
		return "", err
	}
	var found []string
	for _, id := range strings.Split(ids, ",") {
		if id == "" {
			continue
		}
		raw, err := ctx.GetStub().GetState(p + "id/" + id)
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
	if _, err := mayRead(ctx); err != nil {
		return "", err
	}
	p, err := prefix(ledger)
	if err != nil {
		return "", err
	}
	if role != "in" && role != "out" {
		return "", invalid("role must be \"in\" or \"out\", got %q", role)
	}
	var scan string
	switch {
	case path != "":
		scan = p + "x/" + role + "/p/" + digestHex([]byte(path)) + "/"
	case digest != "":
		scan = p + "x/" + role + "/d/" + digest + "/"
	default:
		scan = p + "x/" + role + "/p/"
	}
	places, err := scanPlaces(ctx, scan, func(value []byte) bool {
		return path == "" || digest == "" || string(value) == digest
	})
	if err != nil {
		return "", err
	}
	return locate(ctx, p, places)
}

// ByRun returns the records of one workflow run, in ledger order.
func (c *LedgerContract) ByRun(ctx contractapi.TransactionContextInterface, ledger string, runID string) (string, error) {
	if _, err := mayRead(ctx); err != nil {
		return "", err
	}
	p, err := prefix(ledger)
	if err != nil {
		return "", err
	}
	places, err := scanPlaces(ctx, p+"run/"+digestHex([]byte(runID))+"/", nil)
	if err != nil {
		return "", err
	}
	return locate(ctx, p, places)
}

// ByIDPrefix returns up to limit records whose id starts with the hex prefix.
func (c *LedgerContract) ByIDPrefix(ctx contractapi.TransactionContextInterface, ledger string, idPrefix string, limit int) (string, error) {
	if _, err := mayRead(ctx); err != nil {
		return "", err
	}
	p, err := prefix(ledger)
	if err != nil {
		return "", err
	}
	if strings.ContainsAny(idPrefix, "/~") {
		return "", invalid("record id prefixes are hex digits")
	}
	it, err := ctx.GetStub().GetStateByRange(p+"id/"+idPrefix, rangeEnd(p+"id/"+idPrefix))
	if err != nil {
		return "", err
	}
	defer it.Close()
	var places []string
	for it.HasNext() && len(places) < limit {
		kv, err := it.Next()
		if err != nil {
			return "", err
		}
		fields := strings.Split(string(kv.Value), "\t")
		h, _ := strconv.ParseInt(fields[0], 10, 64)
		pos, _ := strconv.Atoi(fields[1])
		places = append(places, place(h, pos))
	}
	sort.Strings(places)
	return locate(ctx, p, places)
}

// scanPlaces collects the "<height>/<position>" tails of the keys under scan, keeping those
// whose value passes keep (nil keeps all), de-duplicated and in ledger order.
func scanPlaces(ctx contractapi.TransactionContextInterface, scan string, keep func([]byte) bool) ([]string, error) {
	it, err := ctx.GetStub().GetStateByRange(scan, rangeEnd(scan))
	if err != nil {
		return nil, err
	}
	defer it.Close()
	unique := map[string]bool{}
	for it.HasNext() {
		kv, err := it.Next()
		if err != nil {
			return nil, err
		}
		if keep != nil && !keep(kv.Value) {
			continue
		}
		unique[kv.Key[len(kv.Key)-len("000000000000/000000"):]] = true
	}
	places := make([]string, 0, len(unique))
	for at := range unique {
		places = append(places, at)
	}
	sort.Strings(places) // zero-padded, so string order is ledger order
	return places, nil
}

func locate(ctx contractapi.TransactionContextInterface, p string, places []string) (string, error) {
	items := make([]located, 0, len(places))
	for _, at := range places {
		body, err := ctx.GetStub().GetState(p + "r/" + at)
		if err != nil {
			return "", err
		}
		if body == nil {
			return "", fmt.Errorf("index names record %s, which is missing", at)
		}
		height, _ := strconv.ParseInt(at[:12], 10, 64)
		position, _ := strconv.Atoi(at[13:])
		items = append(items, located{Height: height, Position: position, ID: digestHex(body), Body: string(body)})
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
