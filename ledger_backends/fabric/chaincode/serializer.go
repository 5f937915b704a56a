package main

import (
	"fmt"
	"reflect"
	"strconv"

	"github.com/hyperledger/fabric-contract-api-go/v2/metadata"
	"github.com/hyperledger/fabric-contract-api-go/v2/serializer"
)

// plainSerializer converts string and int arguments, and string results, directly. The
// default JSONSerializer also checks each value against the JSON schema generated from its
// Go type ("a string", "an integer"), which says nothing the conversion has not enforced,
// and does it by marshalling the value into a JSON document and decoding it again: for
// Append's argument (a whole block of records) and every query's answer, that was about a
// tenth of the chaincode's CPU. Other kinds (none today) go to the JSON serializer.
type plainSerializer struct {
	serializer.JSONSerializer
}

func (s *plainSerializer) FromString(param string, fieldType reflect.Type, parameter *metadata.ParameterMetadata, components *metadata.ComponentMetadata) (reflect.Value, error) {
	switch fieldType.Kind() {
	case reflect.String:
		return reflect.ValueOf(param).Convert(fieldType), nil
	case reflect.Int:
		n, err := strconv.Atoi(param)
		if err != nil {
			return reflect.Value{}, fmt.Errorf("conversion error. cannot convert passed value %.40q to int", param)
		}
		return reflect.ValueOf(n).Convert(fieldType), nil
	}
	return s.JSONSerializer.FromString(param, fieldType, parameter, components)
}

func (s *plainSerializer) ToString(result reflect.Value, resultType reflect.Type, returns *metadata.ReturnMetadata, components *metadata.ComponentMetadata) (string, error) {
	if resultType.Kind() == reflect.String {
		return result.String(), nil
	}
	return s.JSONSerializer.ToString(result, resultType, returns, components)
}
